"""VL-PET (Hu et al., ICCV 2023, arXiv 2308.09804): granularity-controlled modular modifications.

Encoder module, on the output projection of a sublayer (attn.out / mlp.out), x the sublayer block's
input and h its output:
    h' = h + W_up GELU(concat_i W_down^i h)       multi-head down: `heads` maps d → r/heads; W_up: r → d
    H  = gate_scale · G ⊙ h'                        the model's dropout, residual and norm follow
The granularity is the shape of the gate G:
    large     N×d  σ(W_gu GELU(W_gd x)), W_gd: d → r_g (`gate_bottleneck`), W_gu: r_g → d
    middle_x  N×1  σ(w·(x + h') + b)
    middle_y  1×d  1 + g, g ∈ R^d                  (the official code's h' + h'⊙g)
    small     1×1  mean over tokens of σ(w·[x ; h'] + b), one value per sample
Init follows the official code. BART (default): every weight ~ N(0, 0.02), biases 0, so G ≈ 0.5
(middle_y: ≈ 1) and the sublayer outputs are roughly halved at step 0: VL-PET does not start at the
base model, on purpose. `zero_init=True` is the T5 setting: the up projections of the adapter, of the
gates and of the decoder value adapter start at 0 (G = 0.5 exactly, middle_y G = 1); the T5 scripts
also set gate_scale=0.3.

Lightweight decoder (encoder–decoder models): no per-layer modules in the decoder; with
`decoder_value_adapter=True` each cross-attention value projection (role xattn.v, T5) gets a parallel
adapter on the encoder states it reads, V = W_v x_enc + W_up act(W_down x_enc) (`decoder_bottleneck`).
By default VL-PET targets attn.out and mlp.out outside a top-level `decoder.` (T5's decoder).

The adapter, the gates' low-rank generator and the value adapter are the shared `Bottleneck` of
`adapters.py`; the block input x comes from the same sibling hook as the parallel adapter's
(`BlockInput`, released with the adapter). Trainable per gated module: (d·r + r) + (r·d + d) plus the
gate: large (d·r_g + r_g) + (r_g·d + d), middle_x d + 1, middle_y d, small 2d + 1; per value adapter
(d_in·r + r) + (r·d_out + d_out). Not mergeable (input-dependent gate, nonlinear adapter).

Paper vs code and petkit choices: the formulas and inits are the official code's (the spec gives only
those). x is the input the sublayer reads: the residual stream in post-LN models (BART, BERT) as in the
paper; in pre-LN models (T5, GPT-2, Llama, ViT) it is the normalised residual, where the T5 code feeds
the gate the raw residual. The small gate averages over every position, padding included, as the code
does (the delta sees no attention mask). Not included: the code also trains the encoder layer norms
(add a `layernorm` adapter) and VL-Adapter's visual projection (no vision-language backbone here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import skip_init

from petkit.core.config import AdapterConfig, check, is_number, is_pos_int
from petkit.core.layer import Delta, in_out_features
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, MethodDefaults, register
from petkit.core.targeting import matches_any
from petkit.methods.adapters import ACTIVATIONS, BlockInput, Bottleneck, BottleneckDelta

GRANULARITIES = ("large", "middle_x", "middle_y", "small")
DECODER_ROLE = "xattn.v"
# The paper's decoder has no per-layer modules: skip T5's decoder but its cross-attention values.
DECODER_EXCLUDE = r"re:decoder\.(?!.*EncDecAttention\.v$).*"


@dataclass(frozen=True)
class VLPetConfig(AdapterConfig):
    """granularity: large, middle_x, middle_y or small. bottleneck (r) and heads (N_h): the multi-head
    adapter, r divisible by heads. gate_bottleneck (r_g): the large gate's generator. activation: of the
    adapter and gate generator (gelu_new, the code's). gate_scale: H ← gate_scale·H (T5 code: 0.3).
    zero_init: the T5 init (see the module docstring). decoder_value_adapter: add the lightweight
    decoder's cross-attention value adapters (encoder–decoder models), of size decoder_bottleneck.
    Defaults are the released BART-base settings (r = r_g = 96, 4 heads)."""

    granularity: str = "large"
    bottleneck: Any = 96
    heads: Any = 4
    gate_bottleneck: Any = 96
    activation: str = "gelu_new"
    gate_scale: Any = 1.0
    zero_init: bool = False
    decoder_value_adapter: bool = False
    decoder_bottleneck: Any = 96

    def __post_init__(self):
        super().__post_init__()
        if not self.targets:
            object.__setattr__(self, "targets", ("attn.out", "mlp.out"))
            object.__setattr__(self, "exclude", self.exclude + (DECODER_EXCLUDE,))
        if self.decoder_value_adapter and DECODER_ROLE not in self.targets:
            object.__setattr__(self, "targets", self.targets + (DECODER_ROLE,))

    def validate(self):
        check(self.granularity in GRANULARITIES,
              f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        for name in ("bottleneck", "heads", "gate_bottleneck", "decoder_bottleneck"):
            check(is_pos_int(getattr(self, name)), f"{name} must be a positive int, got {getattr(self, name)!r}")
        check(self.bottleneck % self.heads == 0,
              f"bottleneck {self.bottleneck} must be divisible by heads {self.heads} (each head maps to bottleneck/heads)")
        check(self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        check(is_number(self.gate_scale) and 0 < self.gate_scale < math.inf,
              f"gate_scale must be a positive number, got {self.gate_scale!r}")
        check(isinstance(self.zero_init, bool), f"zero_init must be true or false, got {self.zero_init!r}")
        check(isinstance(self.decoder_value_adapter, bool),
              f"decoder_value_adapter must be true or false, got {self.decoder_value_adapter!r}")


class VLPetDelta(Delta):
    """H = gate_scale · G ⊙ (y + A(y)), G from the block input x and/or h' by granularity."""

    mergeable = False

    def __init__(self, base, config: VLPetConfig, path: str, model, init: bool):
        super().__init__()
        d = in_out_features(base)[1]
        self.granularity, self.gate_scale = config.granularity, float(config.gate_scale)
        self.block = None if config.granularity == "middle_y" else BlockInput(path, model)
        d_in = self.block.width if self.block else d
        if config.granularity == "middle_x" and d_in != d:
            self.block.remove()
            raise ValueError(f"the middle_x gate adds the block input (width {d_in}) to the output (width {d}); "
                             "they must have the same width")
        self.adapter = Bottleneck(d, config.bottleneck, d, config.activation, heads=config.heads)
        if config.granularity == "large":
            self.gate = Bottleneck(d_in, config.gate_bottleneck, d, config.activation)
        elif config.granularity == "middle_y":
            self.gate = nn.Parameter(torch.empty(d))
        else:
            self.gate = skip_init(nn.Linear, d_in + d if config.granularity == "small" else d, 1)
        if init:
            self.reset(config.zero_init)

    @torch.no_grad()
    def reset(self, zero_init: bool) -> None:
        self.adapter.reset("zero_up" if zero_init else "bert")
        if isinstance(self.gate, Bottleneck):
            self.gate.reset("zero_up" if zero_init else "bert")
            return
        weight = self.gate if isinstance(self.gate, nn.Parameter) else self.gate.weight
        if zero_init:
            nn.init.zeros_(weight)
        else:
            nn.init.normal_(weight, std=0.02)
        if isinstance(self.gate, nn.Linear):
            nn.init.zeros_(self.gate.bias)

    def gate_values(self, x_in: torch.Tensor | None, h2: torch.Tensor) -> torch.Tensor:
        """G, broadcastable against h' (large: N×d, middle_x: N×1, middle_y: d, small: 1×1 per sample)."""
        if self.granularity == "large":
            return torch.sigmoid(self.gate(x_in))
        if self.granularity == "middle_x":
            return torch.sigmoid(self.gate(x_in + h2))
        if self.granularity == "middle_y":
            return 1 + self.gate
        return torch.sigmoid(self.gate(torch.cat([x_in, h2], dim=-1))).mean(dim=-2, keepdim=True)

    def _gated(self, x_in, y):
        h2 = y + self.adapter(y)
        return self.gate_scale * self.gate_values(x_in, h2) * h2

    def forward(self, base, x, y):
        return self._gated(self.block.take(x) if self.block else None, y)

    def routed(self, base, x, y, rows):
        x_in = self.block.take(x)[rows] if self.block else None
        y[rows] = self._gated(x_in, y[rows])

    def release(self):
        if self.block is not None:
            self.block.remove()


def build_vlpet(base, config: VLPetConfig, path: str, model, init: bool = True) -> Delta:
    if config.decoder_value_adapter and matches_any(path, (DECODER_ROLE,), model):
        d_in, d_out = in_out_features(base)
        adapter = Bottleneck(d_in, config.decoder_bottleneck, d_out, config.activation)
        if init:
            adapter.reset("zero_up" if config.zero_init else "bert")
        return BottleneckDelta(adapter, reads="input")  # V = W_v x_enc + A(x_enc)
    return VLPetDelta(base, config, path, model, init)


register(Method(
    name="vlpet", config=VLPetConfig, kind="output", build=build_vlpet, layer_types=LINEAR_TYPES,
    mergeable=False, spec="Hu et al., ICCV 2023 (arXiv 2308.09804); HenryHZY/VL-PET @ 7430cad",
    summary="multi-head adapters under a large/middle/small gate; value adapters for a light decoder",
    default_targets=("attn.out", "mlp.out"),
    bench=MethodDefaults({"granularity": "large", "bottleneck": 48, "heads": 4, "gate_bottleneck": 48},
                         (1e-3, 5e-3), "adapter"),
))
