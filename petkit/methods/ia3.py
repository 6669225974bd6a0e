"""IA³ (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than ICL").

A learned vector l rescales a layer: the output (y = l ⊙ (W x + b)) for attention keys/values, or
the input (y = W (l ⊙ x) + b) for feed-forward layers. l starts at ones (identity); merging scales
rows or columns of W.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.config import AdapterConfig, _as_tuple, check
from petkit.core.layer import Delta, in_out_features, weight_oi
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, register
from petkit.core.targeting import matches_any


@dataclass(frozen=True)
class IA3Config(AdapterConfig):
    """targets default to attention keys/values and the FFN output; `feedforward` lists the targets
    whose *input* is scaled (default: the FFN output layer, as in the paper)."""

    feedforward: tuple = ("mlp.out",)

    def __post_init__(self):
        object.__setattr__(self, "feedforward", _as_tuple(self.feedforward, "feedforward"))
        super().__post_init__()

    def validate(self):
        check(isinstance(self.feedforward, tuple), "feedforward must be a list of target patterns")


class IA3Delta(Delta):
    fused = True

    def __init__(self, base: nn.Module, feedforward: bool):
        super().__init__()
        in_f, out_f = in_out_features(base)
        self.feedforward = feedforward
        self.scale = nn.Parameter(torch.ones(in_f if feedforward else out_f))

    def fused_forward(self, base, x):
        if self.feedforward:
            return base(x * self.scale)
        return base(x) * self.scale

    def forward(self, base, x, y):
        if self.feedforward:  # W (l ⊙ x) + b = y + W ((l − 1) ⊙ x)
            return y + F.linear(x * (self.scale - 1), weight_oi(base))
        return y * self.scale

    @torch.no_grad()
    def _rescale(self, base, op) -> None:
        """Apply op (in-place mul or div) by l to W's columns (input scaling) or rows and bias (output)."""
        if self.feedforward:
            op(weight_oi(base), self.scale[None, :])
            return
        op(weight_oi(base), self.scale[:, None])
        if base.bias is not None:
            op(base.bias, self.scale)

    def merge(self, base):
        self._rescale(base, torch.Tensor.mul_)

    def unmerge(self, base):
        self._rescale(base, torch.Tensor.div_)

    def delta_weight(self, base):
        W = weight_oi(base)
        return W * (self.scale[None, :] - 1) if self.feedforward else W * (self.scale[:, None] - 1)


def build_ia3(base, config: IA3Config, path: str, model, init: bool = True) -> IA3Delta:
    return IA3Delta(base, feedforward=matches_any(path, config.feedforward, model) is not None)


register(Method(
    name="ia3", config=IA3Config, kind="weight", build=build_ia3, layer_types=LINEAR_TYPES,
    mergeable=True, spec="Liu et al. 2022 (arXiv 2205.05638)",
    summary="learned per-feature rescaling of keys, values and FFN inputs",
    default_targets=("attn.kv", "mlp.out"), peft_type="IA3",
))
