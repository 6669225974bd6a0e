"""What a saved adapter must pass before any of it is copied into the model, in either file format
(petkit's, files.py; PEFT's, interop/peft.py): tensor names, shapes and kinds, and the base model."""

from __future__ import annotations

import torch

from petkit.core.errors import AdapterFileError, BaseModelMismatch
from petkit.core.fingerprint import mismatch


def check_base(am, saved, force: bool, where) -> None:
    """Refuse a file saved for another base model (its fingerprint `saved`) unless forced."""
    why = mismatch(saved, am.base_fingerprint)
    if why and not force:
        raise BaseModelMismatch(f"{where} does not fit this model: {why}; pass force=True to load it anyway")


def check_tensors(expected: dict, saved: dict, where: str) -> None:
    """Check that saved tensors match the adapter's tensors in names, shapes and kind."""
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} tensors for modules this model lacks (e.g. {extra[0]!r})")
        raise AdapterFileError(f"{where} does not match the model: {'; '.join(parts)}")
    for key, target in expected.items():
        if tuple(saved[key].shape) != tuple(target.shape):
            raise AdapterFileError(f"{where}: shape mismatch for {key!r}: file has {tuple(saved[key].shape)}, "
                                   f"model expects {tuple(target.shape)}")
        if not saved[key].is_floating_point() and target.is_floating_point():
            raise AdapterFileError(f"{where}: {key!r} has dtype {saved[key].dtype}, expected a float tensor")


def copy_tensors(expected: dict, saved: dict) -> None:
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(saved[key].to(target.dtype))
