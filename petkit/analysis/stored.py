"""Analysis artefacts on disk (an OOD feature bank, a moral direction): tensors as safetensors, the rest
as JSON with the fingerprint of the model that made them. Features from one model mean nothing in
another's space, so loading onto a different model is refused unless forced."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from petkit.core.errors import AdapterFileError, BaseModelMismatch
from petkit.core.fingerprint import fingerprint, mismatch
from petkit.core.storage import read_json, read_tensors, write_files

TENSORS_NAME = "tensors.safetensors"
META_NAME = "meta.json"


def encoder_fingerprint(model: nn.Module) -> dict:
    """The fingerprint of the encoder body, so a bare encoder and the same encoder with a head (or an
    adapter) agree."""
    inner = getattr(model, "base", model)
    return fingerprint(getattr(inner, "base_model", inner))


def model_mismatch(saved, model: nn.Module) -> str | None:
    """Why `model` is not the one whose fingerprint `saved` is, or None when it is."""
    why = mismatch(saved, encoder_fingerprint(model)) if isinstance(saved, dict) else "no model fingerprint recorded"
    return why and why.replace("the adapter's", "its").replace("the adapter", "it")  # core's wording speaks of adapters


def save_artefact(folder, kind: str, tensors: dict[str, torch.Tensor], meta: dict, model: nn.Module) -> Path:
    folder = Path(folder)
    record = {"kind": kind, "model_fingerprint": encoder_fingerprint(model), **meta}
    write_files(folder, {META_NAME: record, TENSORS_NAME: (tensors, {"format": "pt"})})
    return folder


def load_artefact(folder, kind: str, model: nn.Module, force: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    folder = Path(folder)
    if not (folder / META_NAME).is_file():
        raise AdapterFileError(f"{folder} holds no {kind}: {META_NAME} not found")
    meta = read_json(folder / META_NAME)
    if meta.get("kind") != kind:
        raise AdapterFileError(f"{folder} holds a {meta.get('kind')!r}, not a {kind!r}")
    why = model_mismatch(meta.get("model_fingerprint"), model)
    if why and not force:
        raise BaseModelMismatch(f"the {kind} in {folder} does not fit this model: {why}; rebuild it with this "
                                f"model, or pass force=True to use it anyway")
    tensors, _ = read_tensors(folder / TENSORS_NAME)
    return tensors, meta
