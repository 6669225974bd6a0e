"""Removing pruned heads and channels for real: a smaller model, saved and loaded back.

After structured pruning (`StructuredPruner`) and with any LoRA merged (`AdaptedModel.merge_and_unload()`),
`remove_units` slices every pruned block's linear layers: a head's rows of q (and of k and v when each
head has its own) and its columns of the output projection; a channel's rows of the FFN input
projections and its column of the output projection. Grouped-query attention keeps k and v and sets
the attention module's `num_key_value_groups` to the query heads each kv head now serves. The model
computes exactly what the masked model computed, with fewer weights.

Blocks then differ in shape, which a transformers config cannot say, so `save_structured` writes
`structure.json` beside the weights and config ({"format": "petkit-structured", "version": 1,
"modules": {path: [out, in, bias]}, "attention": {path: {"num_key_value_groups": g}}}), and
`load_structured` rebuilds the model from its config, shrinks those modules, and loads the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from petkit.core.errors import AdapterFileError, StateError
from petkit.core.model import AdaptedModel
from petkit.core.storage import read_tensors, write_files
from petkit.models.rebuild import config_record, from_config_folder, read_description, unique_tensors

from .structured import StructuredPruner

CONFIG, WEIGHTS = "structure.json", "model.safetensors"
FORMAT, VERSION = "petkit-structured", 1


def _sliced(linear: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    if not isinstance(linear, nn.Linear):
        raise StateError(f"removing units slices nn.Linear layers; found a {type(linear).__name__} (merge the "
                         "adapters first: AdaptedModel.merge_and_unload())")
    weight, bias = linear.weight.detach(), linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        weight, bias = weight[rows], (bias[rows] if bias is not None else None)
    if cols is not None:
        weight = weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new.train(linear.training)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def remove_units(model: nn.Module, pruner: StructuredPruner) -> dict:
    """Slice the pruned heads and channels out of `model` (a plain model: adapters merged), in place.
    Returns the structure record that save_structured writes."""
    if isinstance(model, AdaptedModel):
        raise StateError("merge the adapters into the weights first: model = am.merge_and_unload()")
    pruner.release()  # the masks' work is done by the slicing now
    record, changed = {"modules": {}, "attention": {}}, []
    for i in pruner.prunable:
        b = pruner.blocks[i]
        heads = torch.nonzero(pruner.head_mask[i]).flatten()
        channels = torch.nonzero(pruner.channel_mask[i]).flatten()
        if len(heads) < b.heads:
            rows = (heads[:, None] * b.head_dim + torch.arange(b.head_dim)).flatten()
            sliced = [(b.q, rows, None), (b.out, None, rows)]
            if b.kv_heads == b.heads:
                sliced += [(b.k, rows, None), (b.v, rows, None)]
            else:
                attention = b.q.rpartition(".")[0]
                groups = len(heads) // b.kv_heads
                model.get_submodule(attention).num_key_value_groups = groups
                record["attention"][attention] = {"num_key_value_groups": groups}
            for path, r, c in sliced:
                _set(model, path, _sliced(model.get_submodule(path), r, c))
            changed += [path for path, _, _ in sliced]
        if len(channels) < b.channels:
            for path in b.ffn_in:
                _set(model, path, _sliced(model.get_submodule(path), channels, None))
            _set(model, b.ffn_out, _sliced(model.get_submodule(b.ffn_out), None, channels))
            changed += [*b.ffn_in, b.ffn_out]
    for path in changed:
        module = model.get_submodule(path)
        record["modules"][path] = [module.out_features, module.in_features, module.bias is not None]
    return record


def save_structured(model: nn.Module, record: dict, folder) -> int:
    """Write the smaller model; returns the size of model.safetensors in bytes."""
    tensors, tied = unique_tensors(model.state_dict())
    files = {CONFIG: {"format": FORMAT, "version": VERSION, **record, "tied": tied},
             WEIGHTS: (tensors, {"format": "pt"})}
    if (config := config_record(model)) is not None:
        files["config.json"] = config
    folder = Path(folder)
    write_files(folder, files)
    return (folder / WEIGHTS).stat().st_size


def load_structured(folder) -> nn.Module:
    """The smaller model in `folder`: rebuilt from its config, the pruned modules shrunk, weights loaded."""
    folder = Path(folder)
    spec = read_description(folder / CONFIG, FORMAT, VERSION, "structured-pruning")
    tensors, _ = read_tensors(folder / WEIGHTS)
    model = from_config_folder(folder, "it was written without one")
    for path, (out_f, in_f, bias) in spec.get("modules", {}).items():
        old = model.get_submodule(path)
        _set(model, path, nn.Linear(in_f, out_f, bias=bias, dtype=old.weight.dtype))
    for path, attrs in spec.get("attention", {}).items():
        model.get_submodule(path).num_key_value_groups = int(attrs["num_key_value_groups"])
    state = {**tensors, **{n: tensors[src] for n, src in (spec.get("tied") or {}).items() if src in tensors}}
    own = model.state_dict()
    wrong = sorted(n for n in own if n not in state or state[n].shape != own[n].shape)
    if wrong:
        raise AdapterFileError(f"{folder / WEIGHTS} does not fit the structure it describes ({wrong[0]}); the file "
                               "is corrupt or was edited")
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    return model.eval()
