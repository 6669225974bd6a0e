"""``load_dataset``: one entry point for named datasets and user files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from petkit.core.errors import ConfigError

from . import instruct, named
from .files import SUFFIXES, load_file, read_rows, to_records
from .hf_datasets import from_hf, is_hf_dataset, is_saved_dataset
from .named import DEFAULT_FRACTIONS, split_paragraphs
from .records import from_splits, label_key, label_names, petkit_splits, task_of
from .splits import contiguous_split, seeded_sample, stratified_sample, stratified_split
from .task import TaskData

READERS = {**named.READERS, **instruct.READERS}


def known_datasets() -> list[str]:
    return sorted(READERS)


def load_dataset(
    name_or_path,
    seed: int = 0,
    *,
    max_train: int | None = None,
    max_eval: int | None = None,
    **file_options,
) -> TaskData:
    """Load a named dataset (see ``known_datasets()``), a data file, your own split files or a Hugging
    Face dataset, split into train/dev/test.

    Named datasets keep their source splits where they have them (see each reader's docstring); the
    rest get a seeded stratified 80/10/10 split. A labelled file is split the same way; a file without
    labels becomes a language-modelling text split 90/5/5 in reading order; a file of SFT records
    (prompt/completion, chat messages or Alpaca fields, see ``sft_formats``) or of regression records
    (``text`` + ``target``: a number or a list of numbers) a seeded 80/10/10 split.

    ``{"train": path, "dev": path, "test": path}`` (``validation`` also names dev) keeps your splits;
    a missing dev or test is carved from train and ``splits_note`` says so. A ``datasets.Dataset``,
    ``DatasetDict`` or ``save_to_disk`` folder is read by ``hf_datasets.from_hf`` the same way.

    ``max_train`` caps the train split and ``max_eval`` each of dev and test: a seeded stratified
    subsample for classification, the first chunks for language modelling. ``file_options`` (text_field,
    label_field, text_pair_field, columns, encoding) go to ``load_file``.
    Equal arguments give equal splits on any machine.
    """
    if is_hf_dataset(name_or_path) or (_looks_like_path(name_or_path) and is_saved_dataset(Path(name_or_path))):
        if file_options:
            raise ConfigError(f"{sorted(file_options)} only apply to data files, not to a Hugging Face dataset")
        return subsample(from_hf(name_or_path, seed), max_train, max_eval, seed)
    if isinstance(name_or_path, dict):  # after the DatasetDict check: a DatasetDict is a dict
        data = _from_split_files(name_or_path, seed, file_options)
        return subsample(data, max_train, max_eval, seed)
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
        if data.task == "regression" or (data.task == "sft" and not (examples and "label" in examples[0])):
            return seeded_sample(examples, n, seed, f"{data.name}/{split}")
        return stratified_sample(examples, n, seed, f"{data.name}/{split}")

    return replace(data, train=cap(data.train, max_train, "train"),
                   dev=cap(data.dev, max_eval, "dev"), test=cap(data.test, max_eval, "test"))


def _looks_like_path(p) -> bool:
    if not isinstance(p, (str, Path)):
        return False
    p = Path(p)
    return p.exists() or p.suffix.lower() in SUFFIXES or len(p.parts) > 1


def _from_split_files(paths: dict, seed: int, options: dict) -> TaskData:
    """Your own train/dev/test files, kept as they are (see ``load_dataset``)."""
    mapped = petkit_splits(paths)
    unknown = sorted(set(paths) - set(mapped.values()))
    if unknown or "train" not in mapped:
        raise ConfigError(f"split files must be given as {{'train': path, 'dev'|'validation': path, 'test': path}} "
                          f"(train required); got keys {sorted(paths)}")
    splits = {}
    for ours, theirs in mapped.items():
        path = Path(paths[theirs])
        rows = read_rows(path, **{k: v for k, v in options.items() if k in ("columns", "encoding")})
        fields = {k: v for k, v in options.items() if k not in ("columns", "encoding")}
        sft = not fields and task_of(rows, str(path)) == "sft"
        splits[ours] = rows if sft else to_records(rows, path, **fields)
    return from_splits(Path(paths[mapped["train"]]).stem, splits, seed, source="split files:")


def _from_file(path: Path, seed: int, options: dict) -> TaskData:
    name = path.stem
    if path.suffix.lower() == ".txt" or options:
        records = load_file(path, **options)
    else:
        rows = read_rows(path)
        if task_of(rows, str(path)) in ("sft", "regression"):  # SFT or regression records: one file, split by seed
            return from_splits(name, {"train": rows}, seed, source="one file:")
        records = to_records(rows, path)
    if "label" not in records[0]:
        texts = [r["text"] for r in records]
        # A single running text (a .txt file) is cut at blank lines so it can be split by chunk.
        chunks = split_paragraphs(texts[0]) if len(texts) == 1 else texts
        train, dev, test = contiguous_split([{"text": c} for c in chunks], (0.9, 0.05, 0.05))
        return TaskData(name, "causal_lm", [], train, dev, test, "contiguous 90/5/5")

    labels = label_names([r["label"] for r in records])
    index = {lab: i for i, lab in enumerate(labels)}
    rows = [{**r, "label": index[label_key(r["label"])]} for r in records]
    train, dev, test = stratified_split(rows, DEFAULT_FRACTIONS, seed, name)
    return TaskData(name, "classification", labels, train, dev, test, "seeded stratified 80/10/10")

