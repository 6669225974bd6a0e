"""Roles found from a model's structure, for model types without a role table (core/role_tables.py).

In every block of every layer stack: the attention modules are the outermost submodules whose class
or attribute name says attention (cross-attention when it says cross/encoder); inside one, the
projections are told apart by their leaf names (q/query, k/key, v/value; qkv for a fused one), then
by shape (the one linear layer that widens the residual stream is a fused qkv) and position (q, k,
v, then the output projection). The rest of the block's linear layers form the MLP: the down
projection reads a width w and writes the residual stream; the layers that read the stream and
write w are its input projections (2w: a fused gate and up), so routers and other layers are left
out. The result is a dict part -> module paths, where a part is one of PARTS.
"""

from __future__ import annotations

import re

from torch import nn

from petkit.core.blocks import block_linears, layer_stacks, residual_width
from petkit.core.module_types import LINEAR_TYPES, is_norm
from petkit.core.unwrapped import named_base_modules

SELF = ("q", "k", "v", "qkv", "out")
PARTS = SELF + tuple("x" + p for p in SELF) + ("gate", "up", "gate_up", "in", "down", "norm")

_ATTENTION = re.compile(r"attention|attn", re.IGNORECASE)
_CROSS = re.compile(r"cross|encdec|enc_dec|encoder_attn", re.IGNORECASE)
_HINTS = {"q": {"q", "query", "wq"}, "k": {"k", "key", "wk"}, "v": {"v", "value", "wv"}}


def derive_parts(model: nn.Module) -> dict[str, list[str]]:
    """Module paths per part, found block by block in the model's layer stacks (empty when none)."""
    parts: dict[str, list[str]] = {p: [] for p in PARTS}
    for stack_name, stack in layer_stacks(model):
        for i, block in enumerate(stack):
            for part, rel in _block_parts(block).items():
                parts[part] += [f"{stack_name}.{i}.{r}" for r in rel]
    return parts


def _block_parts(block: nn.Module) -> dict[str, list[str]]:
    linears = block_linears(block)
    d = residual_width(linears)
    if d is None:
        return {}
    found: dict[str, list[str]] = {}
    inside_attention: set[str] = set()
    for group, cross in _attention_groups(block):
        members = [lin for lin in linears if lin[0] in group]
        inside_attention.update(group)
        for part, paths in _attention_parts(members, d).items():
            found.setdefault("x" + part if cross else part, []).extend(paths)
    for part, paths in _mlp_parts([lin for lin in linears if lin[0] not in inside_attention], d).items():
        found.setdefault(part, []).extend(paths)
    return found


def _attention_groups(block: nn.Module) -> list[tuple[set[str], bool]]:
    """(paths of the linear layers inside, is cross-attention) per outermost attention module of a block.
    Linear layers that are themselves named attention-something form one group together."""
    groups: list[tuple[set[str], bool]] = []
    loose: set[str] = set()
    taken: list[str] = []
    for name, m in named_base_modules(block):
        if not name or any(name.startswith(t + ".") for t in taken):
            continue
        said = _ATTENTION.search(type(m).__name__) or _ATTENTION.search(name.rsplit(".", 1)[-1])
        if not said:
            continue
        if isinstance(m, LINEAR_TYPES):
            loose.add(name)
            continue
        inner = {f"{name}.{n}" for n, c in named_base_modules(m) if n and isinstance(c, LINEAR_TYPES)}
        if inner:
            taken.append(name)
            groups.append((inner, bool(_CROSS.search(name) or _CROSS.search(type(m).__name__))))
    if loose:
        groups.append((loose, False))
    return groups


def _tokens(path: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", path.rsplit(".", 1)[-1].lower()))


def _hint(path: str) -> str | None:
    """What a projection's leaf name says it is: q, k, v, qkv (fused), or None."""
    leaf = path.rsplit(".", 1)[-1].lower()
    said = [p for p, names in _HINTS.items() if _tokens(path) & names]
    if "qkv" in leaf or len(said) > 1:
        return "qkv"
    return said[0] if said else None


def _attention_parts(linears: list[tuple[str, int, int]], d: int) -> dict[str, list[str]]:
    hints = {p: _hint(p) for p, _, _ in linears}
    named = {k: [p for p, h in hints.items() if h == k] for k in ("q", "k", "v", "qkv")}
    writes_stream = [p for p, _, o in linears if o == d]
    if all(len(named[k]) == 1 for k in ("q", "k", "v")) and not named["qkv"]:
        split = {k: named[k] for k in ("q", "k", "v")}
        out = [p for p in writes_stream if hints[p] is None]
        return {**split, "out": out} if len(out) == 1 else split
    fused = named["qkv"] if not any(named[k] for k in ("q", "k", "v")) else []
    if not fused and len(linears) == 2 and not any(hints.values()):
        fused = [p for p, i, o in linears if i == d and o > d]  # the one layer that widens the stream
    if len(fused) == 1:
        out = [p for p in writes_stream if p != fused[0]]
        return {"qkv": fused, "out": out} if len(out) == 1 else {"qkv": fused}
    if len(linears) == 4 and not any(hints.values()) and linears[3][2] == d:  # q, k, v, then out
        return {k: [linears[j][0]] for j, k in enumerate(("q", "k", "v", "out"))}
    return {}  # nothing certain: this attention gets no roles


def _mlp_parts(linears: list[tuple[str, int, int]], d: int) -> dict[str, list[str]]:
    downs = [(p, i) for p, i, o in linears if o == d and i != d]
    widths = {i for _, i in downs}
    plain = [p for p, i, o in linears if i == d and o in widths]
    fused = [p for p, i, o in linears if i == d and o not in widths and o % 2 == 0 and o // 2 in widths]
    fed = {o for p, i, o in linears if p in plain} | {o // 2 for p, i, o in linears if p in fused}
    parts = {"down": [p for p, i in downs if i in fed], "gate_up": fused}
    gates = [p for p in plain if "gate" in _tokens(p)]
    if gates:
        parts.update(gate=gates, up=[p for p in plain if p not in gates])
    elif len(plain) <= len(parts["down"]):
        parts["up"] = plain
    else:  # two input projections per down projection, and no name says which one gates
        parts["in"] = plain
    return {k: v for k, v in parts.items() if v}


def norm_paths(model: nn.Module) -> list[str]:
    """Norms over the residual stream (per-head q/k norms left out), for every family."""
    widths = {residual_width(block_linears(stack[0])) for _, stack in layer_stacks(model)} - {None}
    return [n for n, m in named_base_modules(model) if is_norm(m) and (not widths or _width(m) in widths | {None})]


def _width(norm: nn.Module) -> int | None:
    weight = getattr(norm, "weight", None)
    if isinstance(weight, nn.Parameter):
        return weight.shape[-1]
    shape = getattr(norm, "normalized_shape", None)
    return shape[-1] if shape else None
