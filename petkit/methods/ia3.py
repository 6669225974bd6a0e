"""IA³ (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than ICL").

A learned vector l rescales a layer: the output (y = l ⊙ (W x + b)) for attention keys/values, or
the input (y = W (l ⊙ x) + b) for feed-forward layers. l starts at ones (identity); merging scales
rows or columns of W.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.config import AdapterConfig, _as_tuple, check
from petkit.core.errors import AdapterFileError
from petkit.core.layer import Delta, in_out_features, weight_oi
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, MethodDefaults, register
from petkit.core.targeting import matches_any
from petkit.interop.peft_common import module_names, short
from petkit.interop.peft_tuner import TunerFormat, fan_in_fan_out, literal


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


# -- Hugging Face PEFT's format: IA3 ------------------------------------------------------------------

def _peft_tensors(delta: IA3Delta, layer, path: str) -> dict:
    l = delta.scale.detach()
    return {"ia3_l": l[None, :] if delta.feedforward else l[:, None]}


def _peft_config(config: IA3Config, layers, common: dict) -> dict:
    return {**common, "peft_type": "IA3", "fan_in_fan_out": fan_in_fan_out(layers),
            "feedforward_modules": [path for path, _, d in layers if d.feedforward], "init_ia3_weights": True}


def _from_peft(config: dict, adapter: dict, train_head, file) -> IA3Config:
    ff = config.get("feedforward_modules")
    if isinstance(ff, str):  # PEFT: a string is a regex (full match), a list holds plain suffixes
        is_ff = lambda p: re.fullmatch(ff, p) is not None  # noqa: E731
    else:
        is_ff = lambda p: any(p.endswith(k) for k in module_names(ff))  # noqa: E731
    try:
        feedforward = [literal(p) for p in adapter if is_ff(p)]
    except re.error:
        raise AdapterFileError(f"{file}: feedforward_modules {short(ff)} is not a valid regex") from None
    return IA3Config(targets=[literal(p) for p in adapter], feedforward=feedforward, train_head=train_head)


def _to_delta(delta: IA3Delta, theirs: dict) -> dict:
    if "ia3_l" not in theirs:
        return {}
    l, n = theirs["ia3_l"], delta.scale.numel()
    # PEFT stores (1, in) for feed-forward layers and (out, 1) otherwise; the wrong one is a mismatch
    return {"scale": l.reshape(-1) if tuple(l.shape) == ((1, n) if delta.feedforward else (n, 1)) else l}


PEFT = TunerFormat("IA3", leaves=("ia3_l",), export_layer=_peft_tensors, export_config=_peft_config,
                   import_config=_from_peft, import_layer=_to_delta,
                   twin=("IA3Config", ("target_modules", "feedforward_modules")))


register(Method(
    name="ia3", config=IA3Config, kind="weight", build=build_ia3, layer_types=LINEAR_TYPES,
    mergeable=True, spec="Liu et al. 2022 (arXiv 2205.05638)",
    summary="learned per-feature rescaling of keys, values and FFN inputs",
    default_targets=("attn.kv", "mlp.out"), peft=PEFT,
    # bench: the default targets: attention k, v and the FFN output
    bench=MethodDefaults({}, (3e-3, 1e-2), "rescaling"),
))
