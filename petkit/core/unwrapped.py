"""The base model as if no petkit wrapper were there: its modules and parameters under their own names.

An AdaptedLayer (layer.py) sits where the module it wraps was, keeps that module as `base_layer` and
the adapters' tensors under `deltas`; so in `named_parameters()` a wrapped weight shows up as
`<path>.base_layer.weight`, next to `<path>.deltas.<adapter>...`. Everything that names base weights
(selection adapters, fingerprints, parameter counts, checks of files) reads them from here.
"""

from __future__ import annotations

from torch import nn

from petkit.core.layer import AdaptedLayer


def named_base_modules(model: nn.Module):
    """named_modules() as if no petkit wrapper were there: a wrapped layer shows as its base layer,
    and what is inside it (a task head trained whole) under the names it had."""
    seen: set[int] = set()

    def walk(module: nn.Module, prefix: str):
        if isinstance(module, AdaptedLayer):
            module = module.base_layer
        if id(module) in seen:  # a module at several paths (tied embeddings) shows once, as named_modules does
            return
        seen.add(id(module))
        yield prefix, module
        for name, child in module.named_children():
            yield from walk(child, f"{prefix}.{name}" if prefix else name)

    yield from walk(model, "")


def base_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """named_parameters() of the base model alone, by the names they have without petkit's wrappers
    (no adapter's tensors), in model order."""
    return {name.replace(".base_layer.", "."): p for name, p in model.named_parameters() if ".deltas." not in name}


def tied_parameter_ids(model: nn.Module) -> set[int]:
    """ids of parameters owned by more than one module (tied input/output embeddings)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return {i for i, count in owners.items() if count > 1}
