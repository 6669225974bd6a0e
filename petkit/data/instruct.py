"""Instruction-formatted versions of the local labelled sets: SFT tasks with a measurable answer.

Each example is ``{"prompt", "completion", "label", "template"}``: the prompt asks, in one of at
least four phrasings (chosen per example by a hash of seed and text, so the choice is the same on
every machine), for the label; the completion is what the model must write.

- ``sst2-instruct``: ``negative`` / ``positive``.
- ``trec-instruct``: the coarse question type as a word: abbreviation, description, entity, human,
  location, number.
- ``agnews-instruct``: the topic: world, sports, business, technology (AG News's "Sci/Tech").
- ``trec-json``: a structured answer, one JSON object with a fixed key order,
  ``{"type": "location", "subtype": "city"}``: ``type`` is the coarse word above and ``subtype`` the
  TREC fine tag as Li & Roth wrote it (``city``, ``ind``, ``gr``, ``def``, ``count`` ...). Score it by
  exact match of the string, or per key with ``petkit.train.generative.json_field_accuracy``.

The source splits are kept: these are the ``sst2``, ``trec`` and ``ag_news`` splits with the same
seed (``label`` is the source label id, so stratified subsampling works as for the source).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from . import named
from .locate import find_dataset_dir
from .named import CARVE_FRACTION, TREC_COARSE
from .splits import stratified_split
from .task import TaskData

SST2_WORDS = ["negative", "positive"]
TREC_WORDS = ["abbreviation", "description", "entity", "human", "location", "number"]
AGNEWS_WORDS = ["world", "sports", "business", "technology"]

SST2_TEMPLATES = [
    "Is the sentiment of this movie review positive or negative?\nReview: {text}\nAnswer with one word.",
    "Review: {text}\nDid the reviewer like the movie? Answer positive or negative.",
    "Classify the sentiment of the sentence below as {options}.\n{text}",
    "{text}\nWhat is the sentiment of the text above: {options}?",
]
TREC_TEMPLATES = [
    "What type of answer does this question expect: {options}?\nQuestion: {text}",
    "Question: {text}\nClassify the question by the type of its answer ({options}).",
    "Which category does this question belong to? Choose one of {options}.\n{text}",
    "Reply with one word ({options}): what kind of thing does the question below ask for?\n{text}",
]
AGNEWS_TEMPLATES = [
    "Which topic is this news article about: {options}?\nArticle: {text}",
    "Article: {text}\nClassify the article's topic as {options}.",
    "Name the news section ({options}) of the story below.\n{text}",
    "{text}\nTopic of the text above, one of {options}:",
]
TREC_JSON_TEMPLATES = [
    'Classify the question. Reply with a JSON object {{"type": ..., "subtype": ...}}; type is one of {options}.\n'
    "Question: {text}",
    'Question: {text}\nGive its answer type as JSON with keys "type" ({options}) and "subtype".',
    'Return only JSON of the form {{"type": "...", "subtype": "..."}} for this question (type: {options}).\n{text}',
    '{text}\nWhat answer type does this question expect? Answer as JSON: "type" from {options}, then "subtype".',
]


def _options(words: list[str]) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1]


def template_index(seed: int, task: str, text: str, count: int) -> int:
    """Which of ``count`` phrasings an example gets: a hash of (task, seed, text), stable everywhere."""
    digest = hashlib.sha256(f"{task}\x00{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def _instruct(task: str, source: TaskData, words: list[str], templates: list[str], seed: int,
              answer: Callable[[dict], str] | None = None) -> TaskData:
    options = _options(words)

    def convert(examples: list[dict]) -> list[dict]:
        out = []
        for ex in examples:
            k = template_index(seed, task, ex["text"], len(templates))
            completion = answer(ex) if answer else words[ex["label"]]
            out.append({"prompt": templates[k].format(text=ex["text"], options=options),
                        "completion": completion, "label": ex["label"], "template": k})
        return out

    return TaskData(task, "sft", list(words), convert(source.train), convert(source.dev), convert(source.test),
                    f"{source.name} splits ({source.splits_note})")


def sst2_instruct(seed: int) -> TaskData:
    return _instruct("sst2-instruct", named.sst2(seed), SST2_WORDS, SST2_TEMPLATES, seed)


def trec_instruct(seed: int) -> TaskData:
    return _instruct("trec-instruct", named.trec(seed), TREC_WORDS, TREC_TEMPLATES, seed)


def agnews_instruct(seed: int) -> TaskData:
    return _instruct("agnews-instruct", named.ag_news(seed), AGNEWS_WORDS, AGNEWS_TEMPLATES, seed)


def trec_json(seed: int) -> TaskData:
    """TREC with the fine label too. The same split as ``trec``: stratified_split depends only on the
    coarse labels and the file order, which are the same as ``named.trec`` reads."""
    folder = find_dataset_dir("trec", ["TREC.train", "TREC.test"])

    def read(name: str) -> list[dict]:
        rows = [line.split(" ", 1) for line in named._lines(folder / name, encoding="latin-1")]
        return [{"text": text.strip(), "label": TREC_COARSE.index(tag.split(":")[0]), "fine": tag.split(":")[1]}
                for tag, text in rows]

    train, dev = stratified_split(read("TREC.train"), (1 - CARVE_FRACTION, CARVE_FRACTION), seed, "trec")
    source = TaskData("trec", "classification", TREC_COARSE, train, dev, read("TREC.test"),
                      f"source test; dev = seeded stratified {CARVE_FRACTION:.0%} of source train")

    def answer(ex: dict) -> str:
        return json.dumps({"type": TREC_WORDS[ex["label"]], "subtype": ex["fine"]})

    return _instruct("trec-json", source, TREC_WORDS, TREC_JSON_TEMPLATES, seed, answer)


READERS: dict[str, Callable[[int], TaskData]] = {
    "agnews-instruct": agnews_instruct,
    "sst2-instruct": sst2_instruct,
    "trec-instruct": trec_instruct,
    "trec-json": trec_json,
}
