"""Tokenise SFT records with the loss on the answer only, truncate visibly, and batch them.

    train = sft_dataset(tokenizer, data.train, max_length=256)            # padded batches
    train = sft_dataset(tokenizer, data.train, max_length=256, packing=True)  # packed rows (packing.py)
    print(train.stats.summary())

Labels are the token ids where the model is scored and ``IGNORE_INDEX`` (-100) everywhere else; the
Hugging Face causal-LM loss shifts them itself (position t predicts label t+1), as for ``lm_blocks``.

- prompt/completion and Alpaca records: with a chat template (the default when the tokenizer has
  one) the prompt is the user turn and the completion the assistant turn, scored up to and including
  the template's end-of-turn token. Without one (``chat_template=False``) the prompt and the
  completion are tokenised separately and joined, BOS first if the tokenizer uses one, EOS appended
  to the completion and scored so the model learns to stop. Separate tokenisation means the model is
  trained on exactly the prompt tokens it is later given to generate from.
- ``messages`` records need a chat template: every assistant turn is scored, through its
  end-of-turn token; the rest (system, user, tool turns, role headers) is masked. See
  ``_chat_example`` for how the spans are found.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch.utils.data import Dataset

from petkit.core.errors import ConfigError

from .batches import IGNORE_INDEX, pad_batch, pad_token_id
from .sft_formats import as_messages, detect_format, prompt_completion

# What happens to an example longer than max_length:
#   truncate   - cut the prompt from the left (keeping one token before the first scored one), then,
#                if still too long, the end: the completion survives whenever it fits;
#   keep_start - cut the end (TRL's only mode); a long prompt can leave nothing to score;
#   drop       - leave the example out;
#   error      - raise, naming the example.
TRUNCATION = ("truncate", "keep_start", "drop", "error")


@dataclass
class SFTStats:
    """What tokenisation did to the records: counted, so nothing is cut or dropped silently."""

    format: str
    truncation: str
    max_length: int | None
    chat_template: bool
    examples: int = 0            # records given
    kept: int = 0                # examples in the dataset
    truncated: int = 0           # shortened to max_length (then kept, or dropped_no_labels)
    dropped_too_long: int = 0    # left out by truncation="drop"
    dropped_no_labels: int = 0   # nothing left to score (all labels -100) after truncation
    boundary_mismatches: int = 0  # chat turns whose rendered prefix tokenised differently (see _chat_example)
    tokens: int = 0              # tokens kept
    scored_tokens: int = 0       # tokens with a label
    dropped: list[int] = field(default_factory=list, repr=False)  # indices of the records left out

    def summary(self) -> str:
        limit = f"max_length={self.max_length}, truncation={self.truncation!r}" if self.max_length else "no max_length"
        text = (f"SFT data ({self.format}, {'chat template' if self.chat_template else 'plain text'}, {limit}): "
                f"{self.kept} of {self.examples} examples kept, {self.truncated} truncated, "
                f"{self.dropped_too_long} dropped as too long, {self.dropped_no_labels} dropped with no token "
                f"left to score; {self.scored_tokens} of {self.tokens} tokens scored")
        if self.boundary_mismatches:
            text += (f"; {self.boundary_mismatches} assistant turns re-tokenised differently at a turn boundary "
                     f"(scored from the first differing token)")
        return text


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat_template(tokenizer, fmt: str, chat_template: bool | None) -> bool:
    """Whether records of ``fmt`` are rendered through the tokenizer's chat template (errors if impossible)."""
    has = has_chat_template(tokenizer)
    if fmt == "messages" and (not has or chat_template is False):
        why = "the tokenizer has no chat template" if not has else "chat_template=False"
        raise ConfigError(f"chat records (messages) need a chat template, but {why}. Set tokenizer.chat_template "
                          f"to a Jinja template, or give prompt/completion records for plain-text training")
    if chat_template and not has:
        raise ConfigError("chat_template=True but the tokenizer has no chat template (tokenizer.chat_template is empty)")
    return has if chat_template is None else bool(chat_template)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def bos_ids(tokenizer) -> list[int]:
    """[BOS] when the tokenizer puts one before a text on its own (Llama-style), else []."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def render(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return encode(tokenizer, text)


def prompt_ids(tokenizer, record: dict, chat_template: bool | None = None) -> list[int]:
    """The tokens a model is given to generate this record's answer from, exactly as in training.

    For a ``messages`` record: the chat up to its last assistant turn, with the assistant header.
    """
    fmt = detect_format([record])
    chat = use_chat_template(tokenizer, fmt, chat_template)
    if fmt == "messages":
        messages = as_messages(record, 0)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return render(tokenizer, messages[:last], True)
    prompt, _ = prompt_completion(record, 0, plain=not chat)
    if chat:
        return render(tokenizer, [{"role": "user", "content": prompt}], True)
    return bos_ids(tokenizer) + encode(tokenizer, prompt)


def reference_answer(record: dict) -> str:
    """The text a generated answer is compared with: the completion, output, or last assistant turn."""
    fmt = detect_format([record])
    if fmt == "messages":
        return [m for m in record["messages"] if m["role"] == "assistant"][-1]["content"]
    return record["completion"] if fmt == "prompt_completion" else record["output"]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special)
    return ids


def _chat_example(tokenizer, messages: list[dict], index: int, special: set[int]) -> tuple[list[int], list[int], int]:
    """Token ids, labels and the number of boundary mismatches of one chat.

    The span of assistant turn i is found by rendering prefixes of the chat and comparing tokens with
    the whole chat: it starts after ``messages[:i]`` rendered with the generation prompt (the
    assistant header) and ends after ``messages[:i+1]``. Within it, what follows the last special token
    (the end-of-turn, e.g. SmolLM2's ``<|im_end|>``) is template filler such as a newline and stays
    masked. A template that tokenises a prefix differently from the whole chat (a token merged across
    the boundary, or a template that rewrites earlier turns) gives a prefix that is not a token prefix
    of the whole: the span then starts (or ends) where the two first differ, so a merged boundary
    token is scored rather than lost, and the turn is counted in ``SFTStats.boundary_mismatches``.
    """
    full = render(tokenizer, messages, False)
    labels = [IGNORE_INDEX] * len(full)
    mismatches = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0:
            raise ConfigError(f"example {index} starts with an assistant turn: put a user (or system) turn first")
        before = render(tokenizer, messages[:i], True)
        through = full if i == len(messages) - 1 else render(tokenizer, messages[: i + 1], False)
        start, end = _common_prefix(before, full), _common_prefix(through, full)
        mismatches += int(start < len(before) or end < len(through))
        ends = [j for j in range(start, end) if full[j] in special]
        end = ends[-1] + 1 if ends else end
        labels[start:end] = full[start:end]
    return full, labels, mismatches


def _plain_example(tokenizer, prompt: str, completion: str, bos: list[int]) -> tuple[list[int], list[int]]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token: plain-text SFT appends EOS to each completion so the "
                          "model learns to stop; set tokenizer.eos_token or use a chat template")
    p = bos + encode(tokenizer, prompt)
    c = encode(tokenizer, completion) + [eos]
    return p + c, [IGNORE_INDEX] * len(p) + c


def _truncate(ids: list[int], labels: list[int], max_length: int, policy: str, index: int):
    """(ids, labels) cut to max_length by ``policy``, or None to drop the example."""
    if policy == "error":
        raise ConfigError(f"example {index} has {len(ids)} tokens, more than max_length={max_length} "
                          f"(truncation='error'); raise max_length or choose 'truncate', 'keep_start' or 'drop'")
    if policy == "drop":
        return None
    if policy == "truncate":
        first = next((j for j, y in enumerate(labels) if y != IGNORE_INDEX), len(labels))
        # Keep one token before the first scored one: position t is scored from the tokens before it.
        cut = min(len(ids) - max_length, max(first - 1, 0))
        ids, labels = ids[cut:], labels[cut:]
    return ids[:max_length], labels[:max_length]


def tokenize_records(
    tokenizer, records: Sequence[dict], max_length: int | None = None, truncation: str = "truncate",
    chat_template: bool | None = None,
) -> tuple[list[dict], SFTStats]:
    """Features ``{"input_ids", "labels"}`` of the records (see the module docstring) and their stats.

    ``chat_template``: None = use the tokenizer's template when it has one; True = require it;
    False = plain text (not possible for ``messages`` records). A warning repeats the stats whenever
    an example was truncated or dropped.
    """
    if truncation not in TRUNCATION:
        raise ConfigError(f"truncation must be one of {TRUNCATION}, got {truncation!r}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise ConfigError(f"max_length must be an int >= 2 (one token to read, one to score) or None, got {max_length!r}")
    fmt = detect_format(records)
    chat = use_chat_template(tokenizer, fmt, chat_template)
    stats = SFTStats(fmt, truncation, max_length, chat, examples=len(records))
    special, bos = _special_ids(tokenizer), bos_ids(tokenizer)
    features = []
    for i, record in enumerate(records):
        if fmt == "messages":
            ids, labels, bad = _chat_example(tokenizer, as_messages(record, i), i, special)
            stats.boundary_mismatches += bad
        else:
            prompt, completion = prompt_completion(record, i, plain=not chat)
            if chat:
                turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
                ids, labels, bad = _chat_example(tokenizer, turns, i, special)
                stats.boundary_mismatches += bad
            else:
                ids, labels = _plain_example(tokenizer, prompt, completion, bos)
        if max_length is not None and len(ids) > max_length:
            cut = _truncate(ids, labels, max_length, truncation, i)
            if cut is None:
                stats.dropped_too_long += 1
                stats.dropped.append(i)
                continue
            ids, labels = cut
            stats.truncated += 1
        labels = [IGNORE_INDEX] + labels[1:]  # the first token has nothing before it to be predicted from
        if all(y == IGNORE_INDEX for y in labels):
            stats.dropped_no_labels += 1
            stats.dropped.append(i)
            continue
        features.append({"input_ids": ids, "labels": labels, "index": i})
        stats.tokens += len(ids)
        stats.scored_tokens += sum(y != IGNORE_INDEX for y in labels)
    stats.kept = len(features)
    if stats.truncated or stats.dropped or stats.boundary_mismatches:
        warnings.warn(stats.summary(), stacklevel=3)
    return features, stats


class SFTDataset(Dataset):
    """Tokenised SFT examples; ``collate`` right-pads a batch (``attention_mask``, labels padded with -100).

    ``stats`` says what tokenisation did; ``features[i]["index"]`` is the record an example came from.
    """

    def __init__(self, tokenizer, records: Sequence[dict], max_length: int | None = 512,
                 truncation: str = "truncate", chat_template: bool | None = None):
        self.pad_id = pad_token_id(tokenizer)
        self.features, self.stats = tokenize_records(tokenizer, records, max_length, truncation, chat_template)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]

    def collate(self, features: Sequence[dict]) -> dict:
        # With an attention_mask a KV cache changes nothing, so unlike packed rows these batches do not
        # pass use_cache (a trainer may set it itself).
        rows = [{"input_ids": f["input_ids"], "attention_mask": [1] * len(f["input_ids"]), "labels": f["labels"]}
                for f in features]
        return pad_batch(rows, self.pad_id)


def sft_dataset(tokenizer, records: Sequence[dict], max_length: int | None = 512, truncation: str = "truncate",
                chat_template: bool | None = None, packing: bool = False):
    """An ``SFTDataset`` of the records, or with ``packing=True`` a ``PackedSFTDataset`` of rows of up
    to ``max_length`` tokens (examples are truncated to ``max_length`` first)."""
    dataset = SFTDataset(tokenizer, records, max_length, truncation, chat_template)
    if not packing:
        return dataset
    if max_length is None:
        raise ConfigError("packing needs max_length: the length of a packed row")
    from .packing import PackedSFTDataset

    return PackedSFTDataset(dataset, max_length)

