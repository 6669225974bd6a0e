"""BitFit (Ben Zaken et al. 2022): train only bias terms, expressed as a bias delta Δb.

The base bias stays frozen; y = base(x) + Δb. On a layer without a bias (Llama's linears), Δb is a
new bias; merging such a layer creates the bias parameter and unmerging removes it again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.config import AdapterConfig
from petkit.core.layer import Delta
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, MethodDefaults, register


def _out_features(base: nn.Module) -> int:
    if isinstance(base, nn.LayerNorm):
        return base.normalized_shape[-1]
    if isinstance(base, nn.Conv2d):
        return base.out_channels
    return base.weight.shape[1] if not isinstance(base, nn.Linear) else base.out_features  # Conv1D: (in, out)


@dataclass(frozen=True)
class BitFitConfig(AdapterConfig):
    """targets default to every module that has a bias ("all-bias")."""


class BiasDelta(Delta):
    def __init__(self, base: nn.Module):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(_out_features(base)))
        self.conv = isinstance(base, nn.Conv2d)

    def forward(self, base, x, y):
        return y + (self.bias.view(-1, 1, 1) if self.conv else self.bias)

    @torch.no_grad()
    def merge(self, base):
        if base.bias is None:
            base.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
            self._created_bias = True
        else:
            base.bias.add_(self.bias)

    @torch.no_grad()
    def unmerge(self, base):
        if getattr(self, "_created_bias", False):
            base.bias = None
            del self._created_bias
        else:
            base.bias.sub_(self.bias)


register(Method(
    name="bitfit", config=BitFitConfig, kind="weight",
    build=lambda base, config, path, model, init=True: BiasDelta(base),
    layer_types=LINEAR_TYPES + (nn.LayerNorm, nn.Conv2d), mergeable=True,
    spec="Ben Zaken et al. 2022 (arXiv 2106.10199)", summary="bias terms only (as bias deltas)",
    default_targets=("all-bias",),
    bench=MethodDefaults({}, (1e-3, 5e-3), "selective"),
))
