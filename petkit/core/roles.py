"""Role names: "attention q and v" instead of `encoder.layer.3.attention.self.query`.

A role is a union of parts (core/role_structure.py PARTS). Where a model's parts are is read from
the role table of its family (`model.config.model_type`, core/role_tables.py) or, for any other
model type, found from its structure; `roles_of(model).source` says which, and so does
`AdaptedModel.summary()`. Self- and cross-attention both answer to attn.*; xattn.* is
cross-attention only. attn.kv on a model that fuses q, k and v is the fused layer (as PEFT's IA³
default for GPT-2 is).
"""

from __future__ import annotations

import logging
import re
import weakref
from dataclasses import dataclass

from torch import nn

from petkit.core.errors import TargetError
from petkit.core.role_structure import derive_parts, norm_paths
from petkit.core.role_tables import FAMILIES, LORA_DEFAULT_EXCEPTIONS
from petkit.core.unwrapped import named_base_modules

log = logging.getLogger("petkit")

ROLE_PARTS: dict[str, tuple[str, ...]] = {
    "attn.q": ("q", "xq"), "attn.k": ("k", "xk"), "attn.v": ("v", "xv"), "attn.out": ("out", "xout"),
    "attn.qkv": ("q", "k", "v", "qkv", "xq", "xk", "xv", "xqkv"),
    "attn.kv": ("k", "v", "qkv", "xk", "xv", "xqkv"),
    "xattn.q": ("xq",), "xattn.k": ("xk",), "xattn.v": ("xv",), "xattn.out": ("xout",),
    "mlp.gate": ("gate",), "mlp.up": ("up",), "mlp.in": ("gate", "up", "gate_up", "in"), "mlp.out": ("down",),
    "norm": ("norm",),
}
ALL_ROLES = sorted(ROLE_PARTS)
# A role whose own parts are missing while the fused layer that holds them is there.
_FUSED_INTO = {"attn.q": ("qkv", "attn.qkv"), "attn.k": ("qkv", "attn.qkv"), "attn.v": ("qkv", "attn.qkv"),
               "xattn.q": ("xqkv", "attn.qkv"), "xattn.k": ("xqkv", "attn.qkv"), "xattn.v": ("xqkv", "attn.qkv"),
               "mlp.gate": ("gate_up", "mlp.in"), "mlp.up": ("gate_up", "mlp.in")}


class MissingRole(TargetError):
    """The model has no module playing this role (e.g. the MLP of a mixture-of-experts model whose
    experts are not Linear layers)."""


@dataclass(frozen=True)
class RoleMap:
    """Module paths per part of one model, and where they came from ("table" or "structure")."""

    family: str | None
    source: str
    parts: dict[str, frozenset]

    def paths(self, role: str) -> frozenset:
        found = frozenset().union(*(self.parts.get(p, ()) for p in ROLE_PARTS[role]))
        if found:
            return found
        fused = _FUSED_INTO.get(role)
        if fused and self.parts.get(fused[0]):
            example = sorted(self.parts[fused[0]])[0]
            raise TargetError(f"{self.name} fuses these projections into one layer ({example}); target {fused[1]!r} "
                              f"instead of {role!r}")
        raise MissingRole(f"{self.name} has no role {role!r}; its roles are {', '.join(self.roles()) or 'none'}: "
                          "target one of those, or modules by name")

    def roles(self) -> list[str]:
        return [r for r in ALL_ROLES if any(self.parts.get(p) for p in ROLE_PARTS[r])]

    @property
    def name(self) -> str:
        return f"{self.family or 'this model'} ({'role table' if self.source == 'table' else 'roles found from its structure'})"

    def describe(self) -> str:
        if not self.roles():
            return f"roles of {self.family or 'the model'}: none found (target module names or regexes)"
        how = "from the table" if self.source == "table" else "derived from structure"
        return f"roles of {self.family or 'the model'}: {how}"


def family_of(model) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def roles_of(model: nn.Module) -> RoleMap:
    """The model's role map: from its family's table, else from its structure (cached per model while
    its module tree keeps the same size; petkit's wrappers do not change what the roles are)."""
    size = sum(1 for _ in model.modules())
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == size:
        return cached[1]
    roles = _build(model)
    if cached is None:
        log.info(roles.describe())
    _CACHE[model] = (size, roles)
    return roles


def _build(model: nn.Module) -> RoleMap:
    family = family_of(model)
    norms = frozenset(norm_paths(model))
    table = FAMILIES.get(family or "")
    if table is not None:
        names = [n for n, _ in named_base_modules(model) if n]
        parts = {}
        for part, regex in table.items():
            rx = re.compile(rf"(^|.*\.){regex}")
            parts[part] = frozenset(n for n in names if rx.fullmatch(n))
        if any(parts.get(p) for p in ("q", "k", "v", "qkv")):  # else: a variant the table does not fit
            return RoleMap(family, "table", {**parts, "norm": norms})
    parts = {p: frozenset(v) for p, v in derive_parts(model).items()}
    return RoleMap(family, "structure", {**parts, "norm": norms})


def role_paths(role: str, model: nn.Module) -> frozenset | None:
    """The module paths playing `role` in `model`, or None when `role` is not a role name at all."""
    if role not in ROLE_PARTS:
        return None
    return roles_of(model).paths(role)


def as_on_model(model: nn.Module, defaults) -> tuple[str, ...]:
    """A method's default targets as this model has them: a role whose projections the model fuses
    into one layer becomes that layer's role, once (attn.q, attn.v -> attn.qkv on GPT-2, BLOOM,
    Phi-3; mlp.up -> mlp.in on a fused gate_up), as PEFT's per-architecture tables pick the fused
    layer. Every other pattern stays as it is."""
    parts = roles_of(model).parts
    mapped: list[str] = []
    for target in defaults:
        fused = _FUSED_INTO.get(target)
        if fused and not any(parts.get(p) for p in ROLE_PARTS[target]) and parts.get(fused[0]):
            target = fused[1]
        if target not in mapped:
            mapped.append(target)
    return tuple(mapped)


def lora_default_targets(model: nn.Module) -> tuple[str, ...]:
    """PEFT's default LoRA targets for the model's type: attention q and v (the engine maps them to
    the fused qkv where they are one layer, `as_on_model`) unless its table says otherwise; the same
    rule for model types it does not list."""
    exception = LORA_DEFAULT_EXCEPTIONS.get(family_of(model) or "")
    if exception:
        return exception
    if any(roles_of(model).parts.get(p) for p in ("q", "v", "qkv")):
        return ("attn.q", "attn.v")
    raise TargetError(f"no targets given, and petkit found no attention projections in {type(model).__name__} to "
                      "default to; name the modules to adapt, e.g. targets=['query', 'value'] or 'all-linear'")
