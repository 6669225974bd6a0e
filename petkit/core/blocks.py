"""Transformer blocks found from a module tree: the stacks of identical layers and the width of the
residual stream each block reads and writes. Roles (core/roles.py) and the whole-model methods
(models/structure.py) both read a model through these.
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from petkit.core.module_types import LINEAR_TYPES, Conv1D
from petkit.core.unwrapped import named_base_modules


def layer_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The outermost ModuleLists of identical blocks that have submodules (transformer layers):
    BERT `encoder.layer`, GPT-2 `h`, Llama and ViT `layers`/`layer`, T5 `encoder.block` and `decoder.block`."""
    stacks: list[tuple[str, nn.ModuleList]] = []
    for name, m in named_base_modules(model):
        if (isinstance(m, nn.ModuleList) and len(m) and len({type(b) for b in m}) == 1
                and any(True for _ in m[0].children()) and not any(name.startswith(s + ".") for s, _ in stacks)):
            stacks.append((name, m))
    return stacks


def linear_io(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or GPT-2 Conv1D (whose weight is stored (in, out))."""
    if Conv1D and isinstance(module, Conv1D):
        return tuple(module.weight.shape)
    return module.in_features, module.out_features


def block_linears(block: nn.Module) -> list[tuple[str, int, int]]:
    """(path inside the block, in, out) of every linear layer of a block, in registration order."""
    return [(n, *linear_io(m)) for n, m in named_base_modules(block) if isinstance(m, LINEAR_TYPES)]


def residual_width(linears: list[tuple[str, int, int]]) -> int | None:
    """The width most of a block's linear layers read: the residual stream (q, k, v and the FFN input
    projections read it; only the output projections read something else)."""
    counts = Counter(i for _, i, _ in linears)
    return counts.most_common(1)[0][0] if counts else None
