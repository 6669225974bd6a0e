"""Turning a dataset into batches in an order the trainer controls.

The trainer does not use a shuffling DataLoader: it draws each epoch's order from its own seeded
generator (never the global RNG, which drives dropout) and slices batches from it, so a resumed run
can regenerate the order and skip exactly the batches it already trained on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from petkit.data.splits import permutation

Collate = Callable[[list], dict]


def unpack(data, collate_fn: Collate | None, batch_size: int | None = None) -> tuple[Dataset, Collate]:
    """A map-style dataset and its collate function, from a Dataset or a DataLoader.

    The collate function is, in order: the one passed, the DataLoader's, the dataset's own
    ``collate`` method (petkit.data datasets have one), torch's default.
    """
    if isinstance(data, DataLoader):
        if batch_size is not None and data.batch_size != batch_size:
            warnings.warn(f"the DataLoader's batch_size {data.batch_size} is ignored: the trainer batches "
                          f"its dataset itself with TrainConfig.batch_size={batch_size}", stacklevel=3)
        collate_fn = collate_fn or data.collate_fn
        data = data.dataset
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise TypeError(f"training data must be a map-style Dataset (len + indexing) or a DataLoader over one, "
                        f"got {type(data).__name__}")
    return data, collate_fn or getattr(data, "collate", None) or default_collate


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order for one epoch: a function of (seed, epoch) only, identical on every machine
    and library version (hash-based), so a run can even be resumed elsewhere."""
    return permutation(n, seed, salt=f"train-epoch-{epoch}")


def batch_indices(order: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def iter_batches(dataset: Dataset, batches: Sequence[Sequence[int]], collate: Collate) -> Iterator[dict]:
    for indices in batches:
        yield collate([dataset[i] for i in indices])


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
