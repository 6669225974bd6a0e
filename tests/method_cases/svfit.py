"""Matrix cases of SVFit: r singular values per adapted matrix (fixed r, or by spectral energy)."""

from __future__ import annotations

import torch

from method_cases._shapes import method_layers
from petkit.methods import svfit


def _energy_rank(weight: torch.Tensor, energy: float) -> int:
    s2 = torch.linalg.svdvals(weight.detach().double()) ** 2
    share = torch.cumsum(s2, 0) / s2.sum()
    return next(i + 1 for i, v in enumerate(share.tolist()) if v >= energy - 1e-12)


def svfit_count(am, name):
    cfg = am.adapter_config(name)
    return sum(cfg.r or _energy_rank(b.weight, cfg.energy) for _, b, _ in method_layers(am, name))


CASES = {
    "svfit": lambda fam: svfit.SVFitConfig(r=4, targets="all-linear"),
    "svfit-energy": lambda fam: svfit.SVFitConfig(energy=0.9, targets=["attn.qkv", "mlp.out"]),
}
FORMULAS = {"svfit": svfit_count}
# Singular values are O(1) (T5's weights have σ of several units): an lr of 1e-2 barely moves them
# within 12 steps, so the case uses the higher rate scale-only parameters need.
TRAIN_LRS = {"svfit": 1e-1, "svfit-energy": 1e-1}
