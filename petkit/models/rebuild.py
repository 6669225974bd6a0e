"""A transformers model written as its config and one safetensors file, and rebuilt from them: what
petkit's own model formats (low-bit bases, pruned models) share."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from petkit.core.errors import AdapterFileError
from petkit.core.storage import read_json


def config_record(model: nn.Module) -> dict | None:
    """The model's config.json content, naming this model's class to rebuild (a config made in memory
    names none, and a checkpoint's may name another head than the one it was loaded with), as
    save_pretrained records it; None for a model without a transformers config."""
    if getattr(model, "config", None) is None or not hasattr(model.config, "to_dict"):
        return None
    return {**model.config.to_dict(), "architectures": [type(model).__name__]}


def unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors stored once, {name: the name it shares}) for a state dict where tied modules (an LM head
    tied to the embedding) hold the same tensor: safetensors refuses to write one tensor twice."""
    kept, tied, seen = {}, {}, {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if tensor.numel() and key in seen:
            tied[name] = seen[key]
        else:
            seen[key] = name
            kept[name] = tensor
    return kept, tied


def from_config_folder(folder: Path, hint: str) -> nn.Module:
    """An empty model of the class config.json names, weights uninitialised (they are about to be loaded)."""
    import transformers
    from transformers.initialization import no_init_weights

    if not (folder / "config.json").is_file():
        raise AdapterFileError(f"{folder} has no config.json to rebuild the model from; {hint}")
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise AdapterFileError(f"{folder}/config.json names no transformers model class ({names}); {hint}")
    with no_init_weights():  # every weight is about to be overwritten
        model = cls._from_config(config)
    model.tie_weights()  # no_init_weights skips the tying too (transformers ties in init_weights)
    return model.eval()  # as from_pretrained returns it


def read_description(path: Path, fmt: str, version: int, what: str) -> dict:
    """A format's JSON description (structure.json, pruning.json, ...), refused unless it names `fmt` at `version`."""
    spec = read_json(path)
    if spec.get("format") != fmt or spec.get("version") != version:
        raise AdapterFileError(f"{path} is not a petkit {what} description "
                               f"(format {spec.get('format')!r}, version {spec.get('version')!r})")
    return spec
