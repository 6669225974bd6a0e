"""MoRA: self-activated sparse mixture of rank-1 experts (Lu et al. 2025, "Little by Little: Continual
Learning via Self-Activated Sparse Mixture-of-Rank Adaptive Learning", arXiv 2506.21035).

A rank-r LoRA is read as r rank-1 experts: row A_i (a key) and column B_i (a value). Each token
routes itself with the activations LoRA computes anyway, no router network:
    a = A x,   s_i = a_i / ||a||,   T = top-k(s),   w = softmax_{i∈T}(s_i / τ),   m_i = 1[s_i ≥ δ]
    y = W x + b + Σ_{i∈T} m_i w_i B_i a_i
Scores are signed, as in the paper: the experts whose key points along x win. δ (`threshold`)
prunes weakly activated experts; None keeps all k. B starts at zero, A kaiming-uniform (LoRA's init),
so the model starts exactly at the base. Trainable: r · (in + out) per module; active per token:
top_k · (in + out) (`active_parameters`).

Not mergeable, for any setting: w depends on x through the softmax even when top_k = r, so there is
no single ΔW (a given input's ΔW = B diag(m ⊙ w(x)) A could be formed, but only per token).
`live` limits the mixture to the first `live` experts (the rest sit unused, as if not yet added):
petkit.continual's MoRA protocol grows it by a block of new experts per task and freezes the earlier
ones. The paper's values of k, τ and δ were not available (spec §7), so the defaults are ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.config import AdapterConfig, check, is_number, is_pos_int
from petkit.core.layer import Delta, in_out_features
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, MethodDefaults, register


@dataclass(frozen=True)
class MoraConfig(AdapterConfig):
    """r: rank-1 experts per module; top_k: experts each token uses; temperature: τ of the softmax
    over the chosen scores; threshold: δ, drop chosen experts scoring below it (None: no pruning).
    targets default to attention q and v (the fused qkv layer where the model fuses them), as LoRA's."""

    r: int = 8
    top_k: int = 2
    temperature: float = 1.0
    threshold: float | None = None

    def validate(self):
        check(is_pos_int(self.r), f"r must be a positive int, got {self.r!r}")
        check(is_pos_int(self.top_k), f"top_k must be a positive int, got {self.top_k!r}")
        check(self.top_k <= self.r, f"top_k must be at most r (the number of experts), got top_k={self.top_k} > r={self.r}")
        check(is_number(self.temperature) and 0 < self.temperature < math.inf,
              f"temperature must be a positive number, got {self.temperature!r}")
        check(self.threshold is None or (is_number(self.threshold) and -1 <= self.threshold <= 1),
              f"threshold must be None (no pruning) or a number in [-1, 1] (scores are normalised), got {self.threshold!r}")


class MoraDelta(Delta):
    mergeable = False

    def __init__(self, base: nn.Module, config: MoraConfig, init: bool):
        super().__init__()
        in_f, out_f = in_out_features(base)
        self.k, self.tau, self.threshold = config.top_k, float(config.temperature), config.threshold
        self.live: int | None = None  # experts in use: the first `live` (None: all r)
        self.A = nn.Parameter(torch.zeros(config.r, in_f))
        self.B = nn.Parameter(torch.zeros(out_f, config.r))
        if init:
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def gates(self, a: torch.Tensor) -> torch.Tensor:
        """Per-token expert weights m_i · w_i from the activations a = A x (zero outside the top-k)."""
        s = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        top, idx = s.topk(min(self.k, s.shape[-1]), dim=-1)
        w = torch.softmax(top / self.tau, dim=-1)
        if self.threshold is not None:
            w = w * (top >= self.threshold)
        return torch.zeros_like(a).scatter(-1, idx, w)

    def forward(self, base, x, y):
        # experts not yet added (past `live`) neither score nor count in the norm
        A, B = (self.A, self.B) if self.live is None else (self.A[: self.live], self.B[:, : self.live])
        a = F.linear(x.to(A.dtype), A)
        return y + F.linear(self.gates(a) * a, B).to(y.dtype)


def build_mora(base, config: MoraConfig, path: str, model, init: bool = True) -> MoraDelta:
    return MoraDelta(base, config, init)


def active_parameters(am, name: str) -> int:
    """Adapter parameters one token uses: top_k rank-1 experts (a row of A, a column of B) per module."""
    return sum(d.k * (d.A.shape[1] + d.B.shape[0]) for _, _, d in am.layers(name) if isinstance(d, MoraDelta))


register(Method(
    name="mora", config=MoraConfig, kind="output", build=build_mora, layer_types=LINEAR_TYPES,
    mergeable=False, spec="Lu et al. 2025 (arXiv 2506.21035)",
    default_targets=("attn.q", "attn.v"),
    summary="rank-1 experts, each token self-routed to its top-k by its own LoRA activations",
    bench=MethodDefaults({"r": 8, "top_k": 2, "targets": ["attn.q", "attn.v"]}, (1e-3, 5e-3), "low-rank"),
))
