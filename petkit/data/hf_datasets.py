"""Hugging Face ``datasets`` objects as petkit ``TaskData``: a ``Dataset``, a ``DatasetDict`` or a
``save_to_disk`` folder. ``load_dataset`` hands them here; ``datasets`` is imported only then.

Splits named train / validation (or dev, valid, val) / test become petkit's train / dev / test; a
missing dev or test is carved from train (``records.from_splits``). A ``ClassLabel`` label column
keeps its names.
"""

from __future__ import annotations

from pathlib import Path

from petkit.core.errors import ConfigError

from .records import SPLIT_NAMES, from_splits, petkit_splits
from .task import TaskData


def is_hf_dataset(obj) -> bool:
    """A ``datasets.Dataset`` or ``DatasetDict``, recognised without importing ``datasets``."""
    return type(obj).__module__.split(".")[0] == "datasets" and type(obj).__name__ in ("Dataset", "DatasetDict")


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json"))


def from_hf(obj, seed: int = 0, name: str | None = None) -> TaskData:
    """A TaskData of a ``Dataset`` (all of it is train), a ``DatasetDict`` or a save_to_disk folder."""
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        try:
            from datasets import load_from_disk
        except ImportError:
            raise ConfigError(f"reading the saved dataset {path} needs the 'datasets' package: "
                              f"pip install datasets") from None
        return from_hf(load_from_disk(str(path)), seed, name or path.name)
    if not is_hf_dataset(obj):
        raise ConfigError(f"expected a datasets.Dataset or DatasetDict, got {type(obj).__name__}")

    if type(obj).__name__ == "Dataset":
        name = name or _dataset_name(obj)
        return from_splits(name, {"train": obj.to_list()}, seed, source="one Dataset:",
                           label_names=_class_names(obj))
    name = name or _dataset_name(next(iter(obj.values()), None))
    mapped = petkit_splits(obj.keys())
    if "train" not in mapped:
        raise ConfigError(f"the DatasetDict has no train split: its splits are {sorted(obj.keys())}; petkit reads "
                          f"{', '.join(sorted(set(SPLIT_NAMES)))} (rename one to 'train')")
    splits = {ours: obj[theirs].to_list() for ours, theirs in mapped.items()}
    ignored = sorted(set(obj.keys()) - set(mapped.values()))
    renamed = [f"{theirs}->{ours}" for ours, theirs in mapped.items() if ours != theirs]
    source = "DatasetDict" + (f" ({', '.join(renamed)})" if renamed else "") + ":"
    return from_splits(name, splits, seed, source=source, label_names=_class_names(obj[mapped["train"]]),
                       ignored=ignored)


def _dataset_name(ds) -> str:
    info = getattr(ds, "info", None)
    return getattr(info, "dataset_name", None) or "hf_dataset"


def _class_names(ds) -> list[str] | None:
    """The names of a ClassLabel ``label`` column, else None."""
    feature = getattr(ds, "features", {}).get("label")
    names = getattr(feature, "names", None)
    return list(names) if names else None
