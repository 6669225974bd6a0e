"""Which weights MEND edits: by default the MLP projections of a decoder's last blocks (the paper
edits the last 3 blocks' FFN weights), found by role on any architecture, or module paths a user names."""

from __future__ import annotations

from torch import nn

from petkit.core.blocks import layer_stacks, linear_io
from petkit.core.errors import ConfigError
from petkit.core.module_types import Conv1D
from petkit.core.roles import MissingRole, roles_of

MLP_ROLES = ("mlp.in", "mlp.out")  # gate, up (or fused gate_up / fc_in) and down projections
# Float weights only: a low-bit layer has no weight a rank-1 update can be added to.
EDITABLE = (nn.Linear,) + ((Conv1D,) if Conv1D else ())


def default_targets(model: nn.Module, last_blocks: int = 3) -> tuple[str, ...]:
    """The MLP linear layers of the last `last_blocks` transformer blocks, in model order."""
    if not isinstance(last_blocks, int) or isinstance(last_blocks, bool) or last_blocks < 1:
        raise ConfigError(f"last_blocks must be a positive int, got {last_blocks!r}")
    stacks = layer_stacks(model)
    if not stacks:
        raise ConfigError(f"MEND found no stack of transformer blocks in {type(model).__name__}; name the layers to edit")
    stack_name, stack = stacks[-1]  # a decoder's only stack; an encoder-decoder's decoder
    try:
        mlp = frozenset().union(*(roles_of(model).paths(role) for role in MLP_ROLES))
    except MissingRole as exc:
        raise ConfigError(f"MEND edits MLP weights by default, but {exc}") from None
    blocks = [f"{stack_name}.{i}." for i in range(max(0, len(stack) - last_blocks), len(stack))]
    found = [name for name, _ in model.named_modules() if name in mlp and name.startswith(tuple(blocks))]
    if not found:
        raise ConfigError(f"no MLP linear layers in the last {last_blocks} blocks of {stack_name}; name the layers to edit")
    return tuple(found)


def linear_modules(model: nn.Module, targets) -> dict[str, nn.Module]:
    """{path: module} for the named layers; each must exist and be a Linear (or GPT-2 Conv1D)."""
    targets = list(targets)
    if not targets:
        raise ConfigError("MEND needs at least one layer to edit, got none")
    modules = dict(model.named_modules())
    out = {}
    for name in targets:
        if name not in modules:
            near = [n for n in modules if n.endswith(name.rsplit(".", 1)[-1])][:3]
            raise ConfigError(f"no layer named {name!r} in {type(model).__name__}"
                              + (f"; layers with that name end include {', '.join(near)}" if near else ""))
        if not isinstance(modules[name], EDITABLE):
            raise ConfigError(f"MEND edits float linear layers; {name!r} is a {type(modules[name]).__name__}")
        out[name] = modules[name]
    return out


def weight_shapes(modules: dict[str, nn.Module]) -> dict[str, tuple[int, int]]:
    """{path: (in_features, out_features)}: the sizes of u and δ of each edited layer."""
    return {name: linear_io(m) for name, m in modules.items()}


def as_stored(module: nn.Module, grad_like):
    """A (out, in) matrix in the layout the layer stores its weight (GPT-2's Conv1D keeps (in, out))."""
    return grad_like.T if Conv1D and isinstance(module, Conv1D) else grad_like
