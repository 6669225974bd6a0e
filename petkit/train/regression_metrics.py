"""Regression metrics in the targets' original units: MSE, MAE, R², Pearson and Spearman correlation.

With several outputs each metric is computed per output and averaged (every output weighs alike), as
scikit-learn's ``r2_score(multioutput="uniform_average")`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

METRICS = ("mse", "mae", "r2", "pearson", "spearman")


def regression_metrics(predictions: Sequence, targets: Sequence, names: Sequence[str] | None = None) -> dict:
    """``{mse, mae, r2, pearson, spearman}`` averaged over outputs; with ``names``, also ``<metric>_<name>``
    for each output. Rows are examples, columns outputs (a flat list is one output)."""
    p = _matrix(predictions)
    y = _matrix(targets)
    if p.shape != y.shape:
        raise ValueError(f"{tuple(p.shape)} predictions but {tuple(y.shape)} targets")
    if not len(y):
        return {k: float("nan") for k in METRICS}
    columns = {
        "mse": ((p - y) ** 2).mean(0),
        "mae": (p - y).abs().mean(0),
        "r2": 1 - ((p - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0),
        "pearson": _pearson(p, y),
        "spearman": _pearson(_ranks(p), _ranks(y)),
    }
    out = {k: _finite_mean(v) for k, v in columns.items()}
    for i, name in enumerate(names or []):
        out |= {f"{k}_{name}": float(v[i]) for k, v in columns.items()}
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two flat score vectors (average ranks for ties)."""
    return float(_pearson(_ranks(_matrix(a.flatten())), _ranks(_matrix(b.flatten())))[0])


def _matrix(values) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64)
    return t.reshape(-1, 1) if t.dim() == 1 else t


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0))  # NaN for a constant column: undefined


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks per column, ties given their average rank (as scipy.stats.rankdata)."""
    out = torch.empty_like(x)
    for j in range(x.shape[1]):
        values, inverse, counts = torch.unique(x[:, j], return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).to(x.dtype)
        out[:, j] = (ends - (counts.to(x.dtype) - 1) / 2)[inverse]
    return out


def _finite_mean(column: torch.Tensor) -> float:
    finite = column[torch.isfinite(column)]
    return float(finite.mean()) if len(finite) else math.nan
