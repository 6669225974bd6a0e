"""``load_dataset``: one entry point for named datasets and user files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from petkit.core.errors import ConfigError

from .files import SUFFIXES, load_file
from .named import DEFAULT_FRACTIONS, READERS, split_paragraphs
from .splits import contiguous_split, stratified_sample, stratified_split
from .task import TaskData


def known_datasets() -> list[str]:
    return sorted(READERS)


def load_dataset(
    name_or_path: str | Path,
    seed: int = 0,
    *,
    max_train: int | None = None,
    max_eval: int | None = None,
    **file_options,
) -> TaskData:
    """Load a named dataset (see ``known_datasets()``) or a data file, split into train/dev/test.

    Named datasets keep their source splits where they have them (see each reader's docstring); the
    rest get a seeded stratified 80/10/10 split. A labelled file is split the same way; a file without
    labels becomes a language-modelling text split 90/5/5 in reading order.

    ``max_train`` caps the train split and ``max_eval`` each of dev and test: a seeded stratified
    subsample for classification, the first chunks for language modelling. ``file_options`` (text_field,
    label_field, text_pair_field, columns, encoding) go to ``load_file``.
    Equal arguments give equal splits on any machine.
    """
    name = str(name_or_path)
    if name in READERS:
        if file_options:
            raise ConfigError(f"{sorted(file_options)} only apply to data files, not to the named dataset {name!r}")
        data = READERS[name](seed)
    elif _looks_like_path(name_or_path):
        data = _from_file(Path(name_or_path), seed, file_options)
    else:
        raise ConfigError(
            f"unknown dataset {name!r}. Known names: {', '.join(known_datasets())}; "
            f"or pass a path to a {'/'.join(SUFFIXES)} file"
        )
    return subsample(data, max_train, max_eval, seed)


def subsample(data: TaskData, max_train: int | None, max_eval: int | None, seed: int = 0) -> TaskData:
    """Deterministically cap split sizes (see ``load_dataset``)."""
    for n, what in ((max_train, "max_train"), (max_eval, "max_eval")):
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ConfigError(f"{what} must be a positive int or None, got {n!r}")

    def cap(examples: list[dict], n: int | None, split: str) -> list[dict]:
        if data.task == "causal_lm":
            return examples if n is None else examples[:n]
        return stratified_sample(examples, n, seed, f"{data.name}/{split}")

    return replace(data, train=cap(data.train, max_train, "train"),
                   dev=cap(data.dev, max_eval, "dev"), test=cap(data.test, max_eval, "test"))


def _looks_like_path(p: str | Path) -> bool:
    p = Path(p)
    return p.exists() or p.suffix.lower() in SUFFIXES or len(p.parts) > 1


def _from_file(path: Path, seed: int, options: dict) -> TaskData:
    records = load_file(path, **options)
    name = path.stem
    if "label" not in records[0]:
        texts = [r["text"] for r in records]
        # A single running text (a .txt file) is cut at blank lines so it can be split by chunk.
        chunks = split_paragraphs(texts[0]) if len(texts) == 1 else texts
        train, dev, test = contiguous_split([{"text": c} for c in chunks], (0.9, 0.05, 0.05))
        return TaskData(name, "causal_lm", [], train, dev, test, "contiguous 90/5/5")

    labels = _label_names([r["label"] for r in records])
    index = {lab: i for i, lab in enumerate(labels)}
    rows = [{**r, "label": index[_label_key(r["label"])]} for r in records]
    train, dev, test = stratified_split(rows, DEFAULT_FRACTIONS, seed, name)
    return TaskData(name, "classification", labels, train, dev, test, "seeded stratified 80/10/10")


def _label_key(value) -> str:
    return value.strip() if isinstance(value, str) else str(value)


def _label_names(raw: list) -> list[str]:
    """Distinct labels as strings, numerically sorted when they are all integers ("2" < "10")."""
    names = sorted({_label_key(v) for v in raw})
    try:
        return sorted(names, key=int)
    except ValueError:
        return names
