"""Which weights to zero: the masks of essential sparsity's one-shot pruning (Jaiswal et al., NeurIPS
2023, arXiv 2306.03805) and its controls. Every function takes {name: weight as (out, in)} and
returns {name: bool mask of the same shape, True = kept}; nothing here changes a weight.

- global:  one |w| threshold across every weight: exactly round(s · total) of the smallest go (ties
           broken by position, so the count is exact);
- layer:   the same share s of each weight's smallest |w| (layer-uniform);
- random:  round(s · total) weights chosen uniformly at random over all of them (the negative control);
- erk:     random masks whose per-weight densities follow Erdős–Rényi-kernel, ∝ (n_in + n_out)/(n_in·n_out),
           scaled so the total kept count is the dense count times 1 − s (a weight whose density would pass
           1 is kept whole and the rest rescaled, as in RigL's ERK);
- nm:      N:M: in each row, in every group of M consecutive input columns, the N smallest |w| go.
"""

from __future__ import annotations

import torch

from petkit.core.errors import ConfigError

KINDS = ("global", "layer", "random", "erk", "nm")


def check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity must be a number in [0, 1) (the share of weights removed), got {sparsity!r}")
    return float(sparsity)


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A keep-mask that drops exactly `count` of the lowest scores (flattened)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        keep[torch.topk(scores.flatten(), count, largest=False, sorted=False).indices] = False
    return keep.view(scores.shape)


def _split(flat_mask: torch.Tensor, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = flat_mask[start:start + w.numel()].view(w.shape)
        start += w.numel()
    return out


def global_magnitude(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    scores = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
    return _split(_lowest(scores, round(sparsity * scores.numel())), weights)


def layer_magnitude(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    return {n: _lowest(w.detach().abs().float(), round(sparsity * w.numel())) for n, w in weights.items()}


def random_global(weights: dict[str, torch.Tensor], sparsity: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    total = sum(w.numel() for w in weights.values())
    scores = torch.rand(total, generator=generator)
    return _split(_lowest(scores, round(sparsity * total)), weights)


def erk_densities(shapes: dict[str, tuple[int, int]], density: float) -> dict[str, float]:
    """Per-weight densities ∝ (n_in + n_out)/(n_in·n_out) with Σ density·size = density·Σ size, none above 1."""
    sizes = {n: out * inp for n, (out, inp) in shapes.items()}
    raw = {n: (out + inp) / (out * inp) for n, (out, inp) in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        rest = sum(raw[n] * sizes[n] for n in raw if n not in dense)
        scale = budget / rest if rest else 0.0
        over = [n for n in raw if n not in dense and raw[n] * scale > 1]
        if not over:
            return {n: 1.0 if n in dense else raw[n] * scale for n in raw}
        dense.update(over)


def random_erk(weights: dict[str, torch.Tensor], sparsity: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    densities = erk_densities({n: tuple(w.shape) for n, w in weights.items()}, 1 - sparsity)
    out = {}
    for name, w in weights.items():
        scores = torch.rand(w.shape, generator=generator)
        out[name] = _lowest(scores, w.numel() - round(densities[name] * w.numel()))
    return out


def n_m(weights: dict[str, torch.Tensor], n: int, m: int) -> dict[str, torch.Tensor]:
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ConfigError(f"N:M pruning removes N of every M weights and needs 0 < N < M, got N={n!r}, M={m!r}")
    out = {}
    for name, w in weights.items():
        rows, cols = w.shape
        if cols % m:
            raise ConfigError(f"N:M pruning groups M={m} consecutive input columns, but {name} has {cols} inputs "
                              f"(not divisible by {m})")
        groups = w.detach().abs().float().reshape(rows, cols // m, m)
        drop = groups.topk(n, dim=-1, largest=False).indices
        keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        out[name] = keep.reshape(rows, cols)
    return out
