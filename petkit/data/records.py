"""A ``TaskData`` from records a user already split (split files, Hugging Face ``DatasetDict``s).

The user's splits are kept; a missing dev or test split is carved from train, and ``splits_note``
says which. The task is read from the records' fields: an SFT format (``sft_formats``) → ``sft``;
``text`` + ``label`` → ``classification``; ``text`` + ``target`` (numbers) → ``regression``;
``text`` alone → ``causal_lm``.
"""

from __future__ import annotations

from petkit.core.errors import ConfigError

from .named import CARVE_FRACTION, DEFAULT_FRACTIONS
from .regression import TARGET_FIELD, check_targets, target_names
from .sft_formats import FORMATS, record_format
from .splits import contiguous_split, shuffled_split, stratified_split
from .task import TaskData

# Source split names -> petkit's. Anything else (e.g. "unsupervised") is left out and named in splits_note.
SPLIT_NAMES = {"train": "train", "validation": "dev", "valid": "dev", "val": "dev", "dev": "dev", "test": "test"}


def petkit_splits(names) -> dict[str, str]:
    """petkit split -> source split name, for the names that map (two names for one split: error)."""
    mapped: dict[str, str] = {}
    for name in names:
        ours = SPLIT_NAMES.get(str(name).lower())
        if ours is None:
            continue
        if ours in mapped:
            raise ConfigError(f"splits {mapped[ours]!r} and {name!r} both map to petkit's {ours!r}; keep one")
        mapped[ours] = name
    return mapped


def task_of(rows: list[dict], where: str) -> str:
    first = rows[0] if rows else {}
    if record_format(first):
        return "sft"
    if isinstance(first, dict) and "text" in first:
        if TARGET_FIELD in first:
            return "regression"
        return "classification" if "label" in first else "causal_lm"
    fields = sorted(first) if isinstance(first, dict) else type(first).__name__
    formats = "; ".join(f"{n} ({' + '.join(f)})" for n, f in FORMATS.items())
    raise ConfigError(f"{where}: records with fields {fields} are neither SFT examples ({formats}) nor text "
                      f"(+ label, or + target) examples")


def from_splits(name: str, splits: dict[str, list[dict]], seed: int = 0, *, source: str = "",
                label_names: list[str] | None = None, ignored: list[str] = ()) -> TaskData:
    """A TaskData from ``{"train": rows, "dev"?: rows, "test"?: rows}``; see the module docstring.

    ``label_names``: the names of integer labels (a ``ClassLabel``); otherwise the distinct label
    values, numerically sorted when all are integers, become the names.
    """
    if not splits.get("train"):
        raise ConfigError(f"{name}: no train split (or it is empty); splits given: {sorted(splits)}")
    task = task_of(splits["train"], f"{name}/train")
    for split, rows in splits.items():
        if rows and task_of(rows, f"{name}/{split}") != task:
            raise ConfigError(f"{name}: the {split} split's records are not {task} records like train's")

    labels: list[str] = []
    if task == "classification":
        splits, labels = _label_ids(splits, label_names)
    if task == "regression":
        outputs = None
        for split, rows in splits.items():
            outputs = check_targets(rows, f"{name}/{split}", outputs)
        labels = target_names(outputs, label_names)
    missing = [s for s in ("dev", "test") if not splits.get(s)]
    kept = [s for s in ("train", "dev", "test") if splits.get(s)]
    train = splits["train"]
    carved = {}
    if missing:
        fractions = DEFAULT_FRACTIONS if len(missing) == 2 else (1 - CARVE_FRACTION, CARVE_FRACTION)
        parts = _carve(train, fractions, seed, name, task)
        train, carved = parts[0], dict(zip(missing, parts[1:]))
    how = {"classification": "seeded stratified", "sft": "seeded", "regression": "seeded", "causal_lm": "contiguous"}[task]
    note = f"{source + ' ' if source else ''}{'/'.join(kept)} kept"
    if missing:
        share = "10%" if len(missing) == 1 else "10% each"
        note += f"; {' and '.join(missing)} = {how} {share} carved from train"
    if ignored:
        note += f"; splits not used: {', '.join(ignored)}"
    return TaskData(name, task, labels, train, carved.get("dev") or splits.get("dev") or [],
                    carved.get("test") or splits.get("test") or [], note)


def _carve(rows: list[dict], fractions, seed: int, name: str, task: str) -> list[list[dict]]:
    if task == "classification":
        return stratified_split(rows, fractions, seed, name)
    if task == "causal_lm":
        return contiguous_split(rows, fractions)
    return shuffled_split(rows, fractions, seed, name)


def _label_ids(splits: dict[str, list[dict]], names: list[str] | None) -> tuple[dict, list[str]]:
    """Integer labels and their names, the same ids in every split."""
    if names is not None:
        return splits, list(names)
    names = label_names([r["label"] for rows in splits.values() for r in rows])
    index = {lab: i for i, lab in enumerate(names)}
    return {s: [{**r, "label": index[label_key(r["label"])]} for r in rows] for s, rows in splits.items()}, names


def label_key(value) -> str:
    return value.strip() if isinstance(value, str) else str(value)


def label_names(raw: list) -> list[str]:
    """Distinct labels as strings, numerically sorted when they are all integers ("2" < "10")."""
    names = sorted({label_key(v) for v in raw})
    try:
        return sorted(names, key=int)
    except ValueError:
        return names
