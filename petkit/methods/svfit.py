"""SVFit (Sun et al. 2024, arXiv 2409.05926): train only the top-r singular values of each weight.

W = U Σ Vᵀ (SVD once, in float32). The top-r singular vectors U_r, V_r are frozen and the r values
σ' start at the actual σ_r, so the model is exactly the base at init:
    y = W x + b + U_r diag(σ' − σ_r) V_rᵀ x,      ΔW = U_r diag(σ' − σ_r) V_rᵀ.
This is the paper's W_e x + U_r diag(σ') V_rᵀ x (W_e = W − W_r) written against the untouched W, so
merging adds ΔW and unmerging subtracts it. Trainable: r scalars per matrix.

r: a fixed count, or (r=0) per matrix the smallest r whose singular values hold `energy` of
Σ σ_i² (the paper keeps >99% of the spectrum). No official code exists; the energy rule is the
paper's, everything else follows the formula above.

On disk the adapter is σ' alone (r numbers per matrix). U_r, V_r and σ_r are non-persistent buffers,
recomputed from the base weight whenever the adapter is built, loading included: the SVD of the same
weights is deterministic (a sign flip of a pair (u_i, v_i) would not change ΔW anyway). So an adapter
must be loaded onto the base it was trained on, which the base fingerprint already enforces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.config import AdapterConfig, check, is_number
from petkit.core.layer import Delta, add_to_weight, weight_oi
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, MethodDefaults, register

DEFAULT_ENERGY = 0.99


@dataclass(frozen=True)
class SVFitConfig(AdapterConfig):
    """r: singular values trained per matrix, or 0 to choose r per matrix from `energy`, the share of
    Σ σ² to keep (default 0.99 when r is 0). Give one of the two. targets default to attention q and
    v (the paper's check adapts them; the fused qkv layer where the model fuses them)."""

    r: int = 0
    energy: float | None = None

    def __post_init__(self):
        if self.r == 0 and self.energy is None:
            object.__setattr__(self, "energy", DEFAULT_ENERGY)
        super().__post_init__()

    def validate(self):
        check(isinstance(self.r, int) and not isinstance(self.r, bool) and self.r >= 0,
              f"r must be a positive int (or 0 to choose it by energy), got {self.r!r}")
        check(self.r == 0 or self.energy is None, "give r or energy, not both (r=0 chooses r per matrix by energy)")
        if self.energy is not None:
            check(is_number(self.energy) and 0 < self.energy <= 1, f"energy must be in (0, 1], got {self.energy!r}")


def energy_rank(S: torch.Tensor, energy: float) -> int:
    """The smallest r with Σ_{i<=r} σ_i² >= energy · Σ σ_i²."""
    cum = torch.cumsum(S.double() ** 2, 0)
    return min(int((cum < energy * cum[-1]).sum()) + 1, S.numel())


class SVFitDelta(Delta):
    def __init__(self, base: nn.Module, r: int, energy: float | None):
        super().__init__()
        W = weight_oi(base).detach().float()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        tol = S[0] * max(W.shape) * torch.finfo(torch.float32).eps  # torch.linalg.matrix_rank's default
        rank = int((S > tol).sum())  # directions beyond it are arbitrary (σ = 0): nothing to rescale
        if r == 0:
            r = min(energy_rank(S, energy), rank)
        elif r > rank:
            raise ValueError(f"r={r} is larger than the rank of its {W.shape[0]}x{W.shape[1]} weight ({rank}); "
                             f"use r <= {rank} or choose r by energy (r=0)")
        self.register_buffer("U", U[:, :r].contiguous(), persistent=False)
        self.register_buffer("Vh", Vh[:r].contiguous(), persistent=False)
        self.register_buffer("sigma0", S[:r].clone(), persistent=False)
        self.sigma = nn.Parameter(S[:r].clone())

    def forward(self, base, x, y):
        h = F.linear(x.to(self.Vh.dtype), self.Vh) * (self.sigma - self.sigma0)
        return y + F.linear(h, self.U).to(y.dtype)

    def delta_weight(self, base):
        return (self.U * (self.sigma - self.sigma0)) @ self.Vh

    def merge(self, base):
        add_to_weight(base, self.delta_weight(base).detach())

    def unmerge(self, base):
        add_to_weight(base, self.delta_weight(base).detach(), sign=-1.0)


register(Method(
    name="svfit", config=SVFitConfig, kind="weight",
    build=lambda base, config, path, model, init=True: SVFitDelta(base, config.r, config.energy),
    layer_types=LINEAR_TYPES, mergeable=True, spec="Sun et al. 2024 (arXiv 2409.05926)",
    default_targets=("attn.q", "attn.v"),
    summary="top-r singular values of each weight (U, V frozen)",
    # bench: r by 99% energy
    bench=MethodDefaults({"targets": ["attn.q", "attn.v"]}, (5e-3, 2e-2), "rescaling"),
))
