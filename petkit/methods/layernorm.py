"""LayerNorm tuning (Zhao et al. 2023, "Tuning LayerNorm in Attention"): train Δγ, Δβ of every norm.

The norm is evaluated with (γ + Δγ, β + Δβ) through `torch.func.functional_call`, so any norm class
(LayerNorm, Llama/T5 RMSNorm) works without knowing its formula. Δ starts at zero (identity).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from petkit.core.config import AdapterConfig
from petkit.core.layer import Delta
from petkit.core.module_types import is_norm
from petkit.core.registry import Method, MethodDefaults, register


@dataclass(frozen=True)
class LayerNormConfig(AdapterConfig):
    """targets default to every normalisation layer ("all-norm")."""


class NormDelta(Delta):
    fused = True

    def __init__(self, base: nn.Module):
        super().__init__()
        if getattr(base, "weight", None) is None:
            raise ValueError("LayerNorm tuning needs a norm with an affine weight")
        self.weight = nn.Parameter(torch.zeros_like(base.weight, requires_grad=True))
        has_bias = isinstance(getattr(base, "bias", None), nn.Parameter)
        self.bias = nn.Parameter(torch.zeros_like(base.bias, requires_grad=True)) if has_bias else None

    def _params(self, base):
        params = {"weight": base.weight + self.weight}
        if self.bias is not None:
            params["bias"] = base.bias + self.bias
        return params

    def fused_forward(self, base, x):
        return functional_call(base, self._params(base), (x,))

    def forward(self, base, x, y):
        return y + (self.fused_forward(base, x) - base(x))

    @torch.no_grad()
    def merge(self, base):
        base.weight.add_(self.weight)
        if self.bias is not None:
            base.bias.add_(self.bias)

    @torch.no_grad()
    def unmerge(self, base):
        base.weight.sub_(self.weight)
        if self.bias is not None:
            base.bias.sub_(self.bias)


class _AnyNorm(type):
    """isinstance(m, NORM_TYPES) for norm classes the engine cannot import (e.g. LlamaRMSNorm)."""

    def __instancecheck__(cls, obj):
        return is_norm(obj)


class Norm(metaclass=_AnyNorm):
    pass


register(Method(
    name="layernorm", config=LayerNormConfig, kind="weight",
    build=lambda base, config, path, model, init=True: NormDelta(base),
    layer_types=(Norm,), mergeable=True,
    spec="Zhao et al. 2023 (arXiv 2312.11420)", summary="norm gains and biases only",
    default_targets=("all-norm",),
    bench=MethodDefaults({}, (1e-3, 5e-3), "selective"),
))
