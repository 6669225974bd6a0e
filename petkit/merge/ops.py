"""Merging task vectors, on plain tensors: task arithmetic, TIES, DARE, magnitude pruning, and the
low-rank re-factorisation of a merged ΔW.

Every function takes the task vectors τ_i (same shape; for adapters τ_i = ΔW_i, never their
factors) and weights w_i, and returns one tensor. Conventions follow Hugging Face PEFT's
`merge_utils` (and so mergekit's defaults), which the papers leave open:

- trim (TIES): keep the ⌊d·numel⌋ entries of largest |τ_i| per tensor (d = density);
- DARE: keep each entry with probability d and divide by d (E[τ'] = τ);
- elect (TIES): the sign of Σ_i τ_i ("total", the paper's mass vote) or of Σ_i sign(τ_i)
  ("frequency"); 0 counts as +;
- disjoint mean (TIES): Σ_i w_i τ_i m_i / max(1, Σ_i m_i), m_i = [sign τ_i = elected] — divided by the
  number of agreeing tasks, not by their weights (`normalize="weights"`: by Σ_i w_i m_i, mergekit's
  normalize=true). The paper's λ is a common factor of the weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from petkit.core.errors import ConfigError

METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
SIGN_METHODS = ("total", "frequency")
NORMALIZE = ("count", "weights")  # what TIES' disjoint mean divides by


def check_merge_args(count: int, weights: Sequence[float] | None, density: float | None, method: str) -> list[float]:
    """The weights as a list (default: 1 each), after checking method, weights and density."""
    if method not in METHODS:
        raise ConfigError(f"merge method must be one of {', '.join(METHODS)}, got {method!r}")
    if count < 1:
        raise ConfigError("nothing to merge: give at least one task vector")
    weights = [1.0] * count if weights is None else list(weights)
    if len(weights) != count:
        raise ConfigError(f"{len(weights)} weights for {count} inputs: give one weight per input")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        raise ConfigError(f"weights must be finite numbers, got {weights}")
    needs_density = method != "linear"
    if needs_density and (not isinstance(density, (int, float)) or isinstance(density, bool) or not 0 < density <= 1):
        raise ConfigError(f"{method} needs a density in (0, 1] (the fraction of entries kept), got {density!r}")
    if not needs_density and density is not None:
        raise ConfigError("linear merging keeps every entry: drop density, or use ties, dare_* or magnitude_prune")
    return weights


def magnitude_trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """τ with only its ⌊density·numel⌋ largest-magnitude entries kept."""
    keep = int(density * tau.numel())
    if keep >= tau.numel():
        return tau.clone()
    out = torch.zeros_like(tau)
    if keep > 0:
        index = tau.abs().flatten().topk(keep).indices
        out.view(-1)[index] = tau.view(-1)[index]
    return out


def dare_drop(tau: torch.Tensor, density: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each entry kept with probability density and rescaled by 1/density; the rest zeroed."""
    keep = torch.rand(tau.shape, generator=generator, device=tau.device) < density
    return torch.where(keep, tau / density, torch.zeros_like(tau))


def elect_sign(stacked: torch.Tensor, method: str = "total") -> torch.Tensor:
    """+1 / −1 per entry: the sign of the summed values (total) or of the summed signs (frequency)."""
    if method not in SIGN_METHODS:
        raise ConfigError(f"sign election must be one of {', '.join(SIGN_METHODS)}, got {method!r}")
    vote = stacked.sum(0) if method == "total" else stacked.sign().sum(0)
    return torch.where(vote >= 0, 1.0, -1.0).to(stacked.dtype)


def disjoint_mean(stacked: torch.Tensor, weights: torch.Tensor, elected: torch.Tensor,
                  normalize: str = "count") -> torch.Tensor:
    agree = stacked.sign() == elected
    weighted = (stacked * weights * agree).sum(0)
    if normalize == "count":
        return weighted / agree.sum(0).clamp(min=1)
    if normalize == "weights":
        total = (weights * agree).sum(0)
        return torch.where(total != 0, weighted / torch.where(total != 0, total, 1.0), 0.0)
    raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")


def merge_tensors(taus: Sequence[torch.Tensor], weights: Sequence[float] | None = None, method: str = "linear",
                  density: float | None = None, sign_method: str = "total", normalize: str = "count",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One merged task vector from taus (all the same shape), computed in float32 or wider."""
    weights = check_merge_args(len(taus), weights, density, method)
    shapes = {tuple(t.shape) for t in taus}
    if len(shapes) != 1:
        raise ConfigError(f"task vectors of different shapes cannot be merged: {sorted(shapes)}")
    dtype = torch.promote_types(taus[0].dtype, torch.float32)
    taus = [t.to(dtype) for t in taus]
    if method == "magnitude_prune":
        taus = [magnitude_trim(t, density) for t in taus]
    elif method.startswith("dare"):
        taus = [dare_drop(t, density, generator) for t in taus]
    if method in ("linear", "dare_linear", "magnitude_prune"):
        return sum(w * t for w, t in zip(weights, taus))
    if method == "ties":
        taus = [magnitude_trim(t, density) for t in taus]
    stacked = torch.stack(taus)
    w = torch.tensor(weights, dtype=dtype).view(-1, *([1] * (stacked.dim() - 1)))
    return disjoint_mean(stacked, w, elect_sign(stacked, sign_method), normalize)


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B, A, relative error) with B A the best rank-`rank` approximation of delta (out × in), by SVD:
    B = U_r S_r, A = V_rᵀ; the error is ‖delta − B A‖_F / ‖delta‖_F (0 for a zero delta)."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ConfigError(f"rank must be a positive integer, got {rank!r}")
    matrix = delta.to(torch.promote_types(delta.dtype, torch.float32))
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    rank = min(rank, s.numel())
    b, a = u[:, :rank] * s[:rank], vh[:rank]
    norm = torch.linalg.norm(s)
    error = float(torch.linalg.norm(s[rank:]) / norm) if norm > 0 else 0.0
    return b, a, error
