"""Fact edits: a prompt, the new target it should be continued with, rephrasings of the prompt (to
test that the edit generalises) and unrelated prompts (to test that nothing else moves). Read from
JSONL or generated about made-up entities the model cannot know, so every target is a real change.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from petkit.core.errors import ConfigError


@dataclass(frozen=True)
class Edit:
    prompt: str
    target: str
    rephrasings: tuple[str, ...] = ()
    locality: tuple[str, ...] = field(default=())

    def __post_init__(self):
        for name in ("prompt", "target"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigError(f"an edit needs a non-empty {name}, got {getattr(self, name)!r}")
        object.__setattr__(self, "rephrasings", tuple(self.rephrasings))
        object.__setattr__(self, "locality", tuple(self.locality))

    @classmethod
    def from_dict(cls, row: dict) -> Edit:
        unknown = set(row) - {"prompt", "target", "rephrasings", "locality"}
        if unknown:
            raise ConfigError(f"unknown edit field(s) {', '.join(sorted(unknown))}; an edit has prompt, target, "
                              "rephrasings, locality")
        return cls(row.get("prompt"), row.get("target"), tuple(row.get("rephrasings", ())),
                   tuple(row.get("locality", ())))

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "target": self.target, "rephrasings": list(self.rephrasings),
                "locality": list(self.locality)}


def read_edits(path) -> list[Edit]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"edits file {path} not found")
    edits = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                raise ConfigError(f"{path} line {number} is not JSON") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path} line {number} must be a JSON object with prompt and target")
            edits.append(Edit.from_dict(row))
    if not edits:
        raise ConfigError(f"{path} holds no edits")
    return edits


def write_edits(path, edits) -> None:
    Path(path).write_text("".join(json.dumps(e.to_dict()) + "\n" for e in edits), encoding="utf-8")


# --- synthetic facts about made-up entities ---------------------------------------------------------

_SYLLABLES = ("ka", "lo", "ver", "mi", "dan", "tor", "ela", "su", "bri", "nor", "za", "quel", "ost", "rin",
              "ma", "vel", "dor", "ith", "pa", "gun", "lis", "ter", "ova", "shen")
CITIES = ("Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Cairo", "Sydney", "Moscow", "Dublin",
          "Vienna", "Lisbon", "Athens", "Oslo", "Prague", "Boston", "Chicago", "Toronto", "Delhi", "Seoul")
JOBS = ("teacher", "nurse", "doctor", "lawyer", "farmer", "pilot", "chef", "painter", "writer", "baker",
        "soldier", "singer", "judge", "dentist", "plumber", "banker", "driver", "scientist", "engineer", "priest")
LANGUAGES = ("French", "German", "Spanish", "Italian", "Russian", "Japanese", "Chinese", "Arabic", "Dutch",
             "Greek", "Polish", "Swedish", "Hindi", "Turkish", "Korean")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown")

# (prompt, rephrasings, target pool, entity kind) per relation
RELATIONS = (
    ("The capital of {e} is", ("{e}'s capital city is", "The seat of government of {e} is in the city of",
                               "The largest city and capital of {e} is"), CITIES, "place"),
    ("The official language of {e} is", ("In {e}, people mostly speak", "The main language spoken in {e} is",
                                         "Most people in {e} speak the language"), LANGUAGES, "place"),
    ("{e} works as a", ("{e}'s job is", "By profession, {e} is a", "{e} earns a living as a"), JOBS, "person"),
    ("{e} was born in the city of", ("{e}'s birthplace is", "The city where {e} was born is",
                                     "{e} comes from the city of"), CITIES, "person"),
    ("The favourite colour of {e} is", ("{e}'s favourite colour is", "The colour {e} likes best is",
                                        "{e} likes the colour"), COLOURS, "person"),
)

# Unrelated prompts whose predictions an edit should leave alone (two disjoint halves: train / test).
LOCALITY_PROMPTS = (
    "The capital of France is", "Water boils at a temperature of", "The sun rises in the",
    "Shakespeare wrote the play", "The largest ocean on Earth is the", "A week has seven",
    "The chemical symbol for gold is", "Cats and dogs are popular", "The first man on the moon was",
    "In winter the weather is usually", "The Eiffel Tower is located in", "Two plus two equals",
    "The opposite of hot is", "Bread is made from", "The Great Wall is in", "Bees make",
    "The president lives in the", "A triangle has three", "Football is played with a", "The heart pumps",
    "The capital of Japan is", "Ice is frozen", "The author of Harry Potter is", "Birds can",
    "The tallest mountain in the world is", "Coffee is a drink made from", "The currency of the United States is the",
    "A year has twelve", "The Amazon is a river in", "Light travels faster than", "The color of grass is",
    "Paris is the capital of", "The moon orbits the", "Most computers run on", "A doctor works in a",
    "Rain falls from the", "The Pacific Ocean is", "Elephants are the largest", "Music is made of",
    "The library is full of",
)


def _entity(rng: random.Random, kind: str, used: set) -> str:
    while True:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        name = f"{word}ia" if kind == "place" else f"{word} {''.join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize()}"
        if name not in used:
            used.add(name)
            return name


def synthetic_edits(n: int, seed: int = 0, locality_half: int = 0, locality_per_edit: int = 3,
                    used: set | None = None) -> list[Edit]:
    """n edits about made-up countries and people, each with 3 rephrasings and `locality_per_edit`
    unrelated prompts from one half of LOCALITY_PROMPTS (0: the first, 1: the second). Entities never
    repeat within `used` (pass one set to several calls for disjoint splits)."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of edits must be a positive int, got {n!r}")
    rng = random.Random(seed)
    used = set() if used is None else used
    half = len(LOCALITY_PROMPTS) // 2
    pool = LOCALITY_PROMPTS[:half] if locality_half == 0 else LOCALITY_PROMPTS[half:]
    edits = []
    for i in range(n):
        prompt, rephrasings, targets, kind = RELATIONS[i % len(RELATIONS)]
        entity = _entity(rng, kind, used)
        edits.append(Edit(prompt.format(e=entity), " " + rng.choice(targets),
                          tuple(r.format(e=entity) for r in rephrasings), tuple(rng.sample(pool, locality_per_edit))))
    return edits


# --- tokens -----------------------------------------------------------------------------------------

def target_ids(tokenizer, target: str, vocab_size: int) -> list[int]:
    """The target's token ids, which the model must be able to produce."""
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if not ids:
        raise ConfigError(f"target {target!r} tokenizes to no tokens")
    bad = [i for i in ids if (unk is not None and i == unk) or i >= vocab_size or i in tokenizer.all_special_ids]
    if bad:
        raise ConfigError(f"target {target!r} holds token(s) the model cannot produce (ids {bad}: unknown, special "
                          f"or beyond its {vocab_size} outputs); choose a target the tokenizer spells in known tokens")
    return ids


def completion_batch(tokenizer, pairs, vocab_size: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+target rows: input_ids, attention_mask, and labels (-100 except on the
    target tokens), for a list of (prompt, target) pairs."""
    if not pairs:
        raise ConfigError("no edits given: an edit batch needs at least one (prompt, target)")
    pad = pad_id(tokenizer)
    rows, labels = [], []
    for prompt, target in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = target_ids(tokenizer, target, vocab_size)
        rows.append(p + t)
        labels.append([-100] * len(p) + t)
    return _padded(rows, labels, pad)


def text_batch(tokenizer, texts) -> dict[str, torch.Tensor]:
    """Right-padded rows of plain prompts (for locality)."""
    pad = pad_id(tokenizer)
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return _padded(rows, [[-100] * len(r) for r in rows], pad)


def _padded(rows, labels, pad: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    return {"input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])}


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def joined(a: dict, b: dict, pad: int) -> dict:
    """Two right-padded batches as one (one forward pass instead of two)."""
    width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    fill = {"input_ids": pad, "attention_mask": 0, "labels": -100}
    return {k: torch.cat([torch.nn.functional.pad(x[k], (0, width - x[k].shape[1]), value=fill[k]) for x in (a, b)])
            for k in fill}
