"""Reading a sparsity curve: how far a model can be pruned before it gets worse.

Essential sparsity (Jaiswal et al. 2023) is "the sparsity beyond which performance declines much
faster with the rise of sparsity"; the paper reads it off a 10%-step curve. petkit reports two
numbers from a metric-versus-sparsity curve (higher metric = better), both read on dev, never test:

- `within_tolerance`: the largest sparsity whose metric is at most `tolerance` below the dense
  model's (1 point of accuracy by default), counting only sparsities up to the first one that falls
  further (a noisy recovery after a collapse does not count);
- `sharp_drop`: the sparsity after which the drop speeds up most: the point with the largest second
  difference of the drop (the discrete "knee"), on an evenly or unevenly spaced grid.
"""

from __future__ import annotations

from petkit.core.errors import ConfigError


def _sorted(points: dict[float, float]) -> list[tuple[float, float]]:
    if 0.0 not in points:
        raise ConfigError("a sparsity curve needs the dense model's value (sparsity 0)")
    return sorted(points.items())


def within_tolerance(points: dict[float, float], tolerance: float = 0.01) -> float:
    curve = _sorted(points)
    dense = points[0.0]
    best = 0.0
    for s, value in curve:
        if dense - value > tolerance:
            break
        best = s
    return best


def sharp_drop(points: dict[float, float]) -> float | None:
    """The sparsity where the slope of the drop grows most (None with fewer than 3 points)."""
    curve = _sorted(points)
    if len(curve) < 3:
        return None
    best, knee = float("-inf"), None
    for (s0, v0), (s1, v1), (s2, v2) in zip(curve, curve[1:], curve[2:]):
        before, after = (v0 - v1) / (s1 - s0), (v1 - v2) / (s2 - s1)  # drop per unit of sparsity
        if after - before > best:
            best, knee = after - before, s1
    return knee
