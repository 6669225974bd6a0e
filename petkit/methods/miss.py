"""MiSS, formerly Bone (Kang 2024, arXiv 2409.15371), as in Hugging Face PEFT's `tuners/miss`.

One trainable block B, zero at init (so the model starts exactly at the base), r the block size:
- "miss" (default): B ∈ R^{r×out}. The input is cut into in/r shards of width r (zero-padded at the
  end) that are summed, then multiplied by B: y = W x + b + (Σ_j x[j·r:(j+1)·r]) B. As a weight,
  ΔW[o, j·r + k] = B[k, o] for every shard j: Bᵀ tiled along the input (rank ≤ r).
- "bat" (Weight Guide): B ∈ R^{(out/r)×r×r}; with W cut into r×r blocks W_ij,
  W'_ij = W_ij + W_ij B_i + B_i (B_i shared by all input blocks of output block i), so ΔW depends on W.
  Needs in and out divisible by r. Unmerge inverts it blockwise: W = (W' − B)(I + B)⁻¹.
- "mini": B ∈ R^{r×mini_r}, repeated out/mini_r times along the output, then as "miss".
Trainable per layer: r·out ("miss", "bat") or r·mini_r ("mini"). Mergeable exactly.

Differences from PEFT: petkit also adapts GPT-2's Conv1D (PEFT: nn.Linear only); the default r is 8,
not 64; PEFT's `init_weights=False` (a random init for its tests) is not offered; and two bat adapters
active at once each add their own ΔW(W), where PEFT feeds the first one's result into the second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.config import AdapterConfig, check, is_number, is_pos_int
from petkit.core.errors import AdapterFileError, ConfigError
from petkit.core.layer import Delta, add_to_weight, in_out_features, weight_oi
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, MethodDefaults, register
from petkit.core.roles import lora_default_targets
from petkit.interop.peft_common import short
from petkit.interop.peft_tuner import TunerFormat, literal

VARIANTS = ("miss", "bat", "mini")


@dataclass(frozen=True)
class MissConfig(AdapterConfig):
    """r: shard (block) size; variant: "miss", "bat" or "mini"; mini_r: output width of the "mini"
    block (out_features must be a multiple of it); dropout on the adapter input ("miss" and "mini")."""

    r: int = 8
    variant: str = "miss"
    mini_r: int = 1
    dropout: float = 0.0

    def validate(self):
        check(is_pos_int(self.r), f"r must be a positive int, got {self.r!r}")
        check(self.variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        check(is_pos_int(self.mini_r), f"mini_r must be a positive int, got {self.mini_r!r}")
        check(is_number(self.dropout) and 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")
        check(self.mini_r == 1 or self.variant == "mini", "mini_r applies to variant 'mini' only; set variant='mini'")
        check(not (self.dropout and self.variant == "bat"),
              "variant 'bat' has no dropout (its forward uses the updated weight); set dropout=0")


class MissDelta(Delta):
    def __init__(self, base: nn.Module, r: int, variant: str, mini_r: int, dropout: float):
        super().__init__()
        in_f, out_f = in_out_features(base)
        if r > in_f:
            raise ValueError(f"r={r} is larger than in_features={in_f}")
        if variant == "bat":
            if in_f % r or out_f % r:
                raise ValueError(f"variant 'bat' cuts the {out_f}x{in_f} weight into {r}x{r} blocks, so in and out "
                                 f"features must be multiples of r={r}; pick such an r or variant 'miss'")
            shape = (out_f // r, r, r)
        elif variant == "mini":
            if out_f % mini_r:
                raise ValueError(f"variant 'mini' repeats its block along out_features={out_f}, which must be a "
                                 f"multiple of mini_r={mini_r}")
            shape = (r, mini_r)
        else:
            shape = (r, out_f)
        self.r, self.variant, self.out_f, self.p = r, variant, out_f, float(dropout)
        self.fused = variant == "bat"  # bat's forward is one linear with the updated weight
        self.block = nn.Parameter(torch.zeros(shape))

    def _shared(self) -> torch.Tensor:
        """The (r, out) matrix every input shard is multiplied by ("miss" and "mini")."""
        B = self.block
        return B.repeat(1, self.out_f // B.shape[1]) if self.variant == "mini" else B

    def _bat_delta(self, W: torch.Tensor) -> torch.Tensor:
        """ΔW with blocks W_ij B_i + B_i, for W in (out, in) layout."""
        r, B = self.r, self.block
        out_f, in_f = W.shape
        blocks = W.to(B.dtype).reshape(out_f // r, r, in_f // r, r).permute(2, 0, 1, 3)  # (j, i, r, r)
        return (blocks @ B + B).permute(1, 2, 0, 3).reshape(out_f, in_f)

    def fused_forward(self, base, x):
        W = weight_oi(base)
        return F.linear(x, W + self._bat_delta(W).to(W.dtype), base.bias)

    def forward(self, base, x, y):
        if self.variant == "bat":
            return y + F.linear(x, self._bat_delta(weight_oi(base)).to(x.dtype))
        B = self._shared()
        x = F.pad(x.to(B.dtype), (0, -x.shape[-1] % self.r))
        x = F.dropout(x, self.p, self.training) if self.p else x
        return y + (x.reshape(*x.shape[:-1], -1, self.r).sum(-2) @ B).to(y.dtype)

    def delta_weight(self, base):
        W = weight_oi(base)
        if self.variant == "bat":
            return self._bat_delta(W)
        in_f = W.shape[1]
        return self._shared().t().repeat(1, math.ceil(in_f / self.r))[:, :in_f]

    def merge(self, base):
        add_to_weight(base, self.delta_weight(base).detach())

    @torch.no_grad()
    def unmerge(self, base):
        if self.variant != "bat":
            add_to_weight(base, self.delta_weight(base), sign=-1.0)
            return
        W = weight_oi(base)
        r, B = self.r, self.block.float()
        out_f, in_f = W.shape
        blocks = W.float().reshape(out_f // r, r, in_f // r, r).permute(2, 0, 1, 3)
        eye = torch.eye(r, dtype=B.dtype, device=B.device)
        original = torch.linalg.solve(eye + B, blocks - B, left=False)  # X (I + B_i) = W'_ij − B_i
        W.copy_(original.permute(1, 2, 0, 3).reshape(out_f, in_f))


# -- Hugging Face PEFT's format: MISS -----------------------------------------------------------------

PEFT_INITS = {"miss": True, "bat": "bat", "mini": "mini"}  # petkit variant -> PEFT's init_weights


def _peft_tensors(delta: MissDelta, layer, path: str) -> dict:
    if not isinstance(layer.base_layer, nn.Linear):
        raise ConfigError(f"PEFT's MiSS adapts nn.Linear layers only, and {path!r} is a "
                          f"{type(layer.base_layer).__name__}; save this adapter with format='petkit'")
    return {"miss_block": delta.block.detach()}


def _peft_config(config: MissConfig, layers, common: dict) -> dict:
    return {**common, "peft_type": "MISS", "r": config.r, "miss_dropout": config.dropout, "mini_r": config.mini_r,
            "init_weights": PEFT_INITS[config.variant], "bias": "none"}


def _from_peft(config: dict, adapter: dict, train_head, file) -> MissConfig:
    init = config.get("init_weights", True)
    if init not in (True, False, "bat", "mini") or not isinstance(init, (bool, str)):
        raise AdapterFileError(f"{file}: MiSS init_weights={short(init)} is unknown; petkit reads true, false, 'bat' and 'mini'")
    variant = init if isinstance(init, str) else "miss"  # False: PEFT's random init for its tests, same forward
    return MissConfig(targets=[literal(p) for p in adapter], r=config.get("r", 64), variant=variant,
                      mini_r=config.get("mini_r", 1) if variant == "mini" else 1,
                      dropout=0.0 if variant == "bat" else config.get("miss_dropout", 0.0) or 0.0, train_head=train_head)


def _to_delta(delta: MissDelta, theirs: dict) -> dict:
    return {"block": theirs["miss_block"]} if "miss_block" in theirs else {}


PEFT = TunerFormat("MISS", leaves=("miss_block",), export_layer=_peft_tensors, export_config=_peft_config,
                   import_config=_from_peft, import_layer=_to_delta,
                   twin=("MissConfig", ("target_modules", "r", "miss_dropout", "mini_r", "init_weights")))


register(Method(
    name="miss", config=MissConfig, kind="weight",
    build=lambda base, config, path, model, init=True: MissDelta(base, config.r, config.variant, config.mini_r,
                                                                  config.dropout),
    layer_types=LINEAR_TYPES, mergeable=True, spec="Kang 2024, Bone/MiSS (arXiv 2409.15371); PEFT tuners/miss",
    summary="shared shard block B: ΔW = Bᵀ tiled over input shards; bat and mini variants", peft=PEFT,
    default_targets=lora_default_targets,  # PEFT's MiSS defaults are its LoRA ones
    # bench: r=16: r·out per matrix, the same trainable count as LoRA r=8's r·(in + out) on these square weights
    bench=MethodDefaults({"r": 16, "targets": ["attn.q", "attn.v"]}, (5e-4, 2e-3), "low-rank"),
))
