"""Saving and loading a quantised base model: packed codes in safetensors, the layer formats in JSON.

A folder holds `quantization.json` ({"format": "petkit-quantized", "version": 1, "layers": {path:
{scheme, bits, group_size, in_features, out_features, bias}}, "tied": {name: name it shares}}),
`model.safetensors` (the whole state dict of the base, packed layers as their `codes`, `scales`,
`zeros` buffers; a tensor shared by two modules is stored once) and, for a transformers model, its
`config.json`, from which `load_quantized` can rebuild the model on its own.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from petkit.core.errors import AdapterFileError
from petkit.core.layer import in_out_features
from petkit.core.module_types import LINEAR_TYPES, Conv1D
from petkit.core.storage import read_tensors, write_files
from petkit.models.rebuild import config_record, from_config_folder, read_description, unique_tensors
from petkit.quant.linear import PackedEmbedding, PackedLinear, QuantFormat
from petkit.quant.quantize import quantized_layers

CONFIG = "quantization.json"
WEIGHTS = "model.safetensors"
FORMAT, VERSION = "petkit-quantized", 1


def save_quantized(model: nn.Module, folder) -> None:
    """Write the base model (without any adapter on it) with its low-bit layers packed."""
    from petkit.core.model import AdaptedModel

    if isinstance(model, AdaptedModel):  # its base, under the base's own module paths
        model = model.base
    layers = quantized_layers(model)
    if not layers:
        raise AdapterFileError("the model has no quantised layers; petkit.quantize(model) first, or save it with "
                               "save_pretrained")
    state, tied = unique_tensors({name.replace(".base_layer.", "."): tensor for name, tensor in model.state_dict().items()
                                  if ".deltas." not in name})
    spec = {"format": FORMAT, "version": VERSION, "tied": tied,
            "layers": {p: _entry(m, layers) for p, m in layers.items()}}
    files = {CONFIG: spec, WEIGHTS: (state, {"format": "pt"})}
    if (config := config_record(model)) is not None:
        files["config.json"] = config
    write_files(Path(folder), files)


def _entry(module, layers: dict) -> dict:
    if isinstance(module, PackedEmbedding):
        return {**module.format.to_dict(), "kind": "embedding", "num_embeddings": module.num_embeddings,
                "embedding_dim": module.embedding_dim, "padding_idx": module.padding_idx}
    entry = {**module.format.to_dict(), "in_features": module.in_features, "out_features": module.out_features,
             "bias": module.bias is not None}
    shares = [p for p, m in layers.items() if isinstance(m, PackedEmbedding) and m.codes is module.codes]
    return {**entry, "shares": shares[0]} if shares else entry


def load_quantized(folder, model: nn.Module | None = None) -> nn.Module:
    """The quantised model saved in `folder`. With `model` (a float model of the same architecture, e.g.
    the original) its layers are replaced in place; without, the model is rebuilt from config.json.
    Everything is checked before the model changes: on an error it is left as it was."""
    folder = Path(folder)
    spec = read_description(folder / CONFIG, FORMAT, VERSION, "quantised-model")
    if model is None:
        model = from_config_folder(folder, "pass the float model: load_quantized(folder, model)")
    tensors, _ = read_tensors(folder / WEIGHTS)
    modules = dict(model.named_modules())
    built = {}
    # embeddings first: a tied output head is built on the embedding's buffers
    for path, entry in sorted(_layers(spec, folder).items(), key=lambda kv: kv[1].get("kind") != "embedding"):
        built[path] = _empty_layer(path, entry, modules, built, folder)
    expected = {}
    for name, tensor in model.state_dict().items():
        owner = name.rpartition(".")[0]
        if owner not in built:
            expected[name] = tensor
    for path, layer in built.items():
        expected.update({f"{path}.{k}": t for k, t in layer.state_dict().items()})
    tied = spec.get("tied") or {}
    _check_tensors(tensors, expected, tied, folder)
    for path, layer in built.items():
        parent, _, leaf = path.rpartition(".")
        setattr(modules[parent] if parent else model, leaf, layer)
    model.load_state_dict({**tensors, **{n: tensors[src] for n, src in tied.items()}}, strict=True)
    return model


def _layers(spec: dict, folder: Path) -> dict:
    layers = spec.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise AdapterFileError(f"{folder / CONFIG} lists no quantised layers")
    return layers


def _empty_layer(path: str, entry, modules: dict, built: dict, folder: Path):
    module = modules.get(path)
    embedding = isinstance(entry, dict) and entry.get("kind") == "embedding"
    if not isinstance(module, nn.Embedding if embedding else LINEAR_TYPES):
        found = "no module" if module is None else f"a {type(module).__name__}"
        raise AdapterFileError(f"{folder} holds a quantised {'embedding' if embedding else 'linear layer'} {path!r}, "
                               f"but the model has {found} there; it was saved from another architecture")
    try:
        fmt = QuantFormat(entry["scheme"], entry["bits"], entry["group_size"])
        if embedding:
            shape, mine = (int(entry["num_embeddings"]), int(entry["embedding_dim"])), tuple(module.weight.shape)
        else:
            shape, mine = (int(entry["in_features"]), int(entry["out_features"])), in_out_features(module)
            bias, shares = bool(entry["bias"]), entry.get("shares")
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterFileError(f"{folder / CONFIG}: the entry of {path!r} is malformed ({exc})") from None
    if shape != mine:
        raise AdapterFileError(f"{path} is {shape[0]}×{shape[1]} in {folder}, but {mine[0]}×{mine[1]} in this model; "
                               "the file was saved from a model of another shape")
    if embedding:
        return PackedEmbedding(*shape, fmt, entry.get("padding_idx"))
    if shares is not None:
        if not isinstance(built.get(shares), PackedEmbedding) or bias or built[shares].format != fmt:
            raise AdapterFileError(f"{folder / CONFIG}: {path!r} shares the codes of {shares!r}, which is not a "
                                   "quantised embedding of the same format")
        return PackedLinear.sharing(built[shares])
    layer = PackedLinear(*shape, fmt, bias=bias)
    layer.transposed = bool(Conv1D) and isinstance(module, Conv1D)
    return layer


def _check_tensors(tensors: dict, expected: dict, tied: dict, folder: Path) -> None:
    file = folder / WEIGHTS
    if not isinstance(tied, dict) or any(src not in tensors for src in tied.values()):
        raise AdapterFileError(f"{folder / CONFIG}: 'tied' names tensors that {file.name} does not hold")
    present = set(tensors) | set(tied)
    missing, unexpected = sorted(set(expected) - present), sorted(present - set(expected))
    if missing or unexpected:
        what = (f"missing {', '.join(missing[:3])}" if missing else "") + (" and " if missing and unexpected else "") + \
               (f"unexpected {', '.join(unexpected[:3])}" if unexpected else "")
        raise AdapterFileError(f"{file} does not fit this model ({what}); it was saved from another architecture")
    for name, want in expected.items():
        got = tensors[tied.get(name, name)]
        if got.shape != want.shape or got.is_floating_point() != want.is_floating_point():
            raise AdapterFileError(f"{file}: {name} is {got.dtype} {tuple(got.shape)}, the model expects "
                                   f"{want.dtype} {tuple(want.shape)}; the file is corrupt or from a model of another shape")
