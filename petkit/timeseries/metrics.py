"""Forecast scores (MSE, MASE) and the seasonal-naive baseline."""

from __future__ import annotations

import numpy as np

from petkit.core.errors import ConfigError


def seasonal_naive(past: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """ŷ[t+h] = y[t+h − m·ceil(h/m)]: the last observed season repeated. past (N, L, C) → (N, H, C)."""
    if not 1 <= season <= past.shape[1]:
        raise ConfigError(f"season {season} must be between 1 and the context length {past.shape[1]}")
    index = past.shape[1] - season + np.arange(horizon) % season
    return past[:, index, :]


def mse(forecast: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((forecast - target) ** 2))


def mase_scale(train: np.ndarray, season: int) -> np.ndarray:
    """Per channel: mean |y_t − y_{t−m}| of seasonal-naive in-sample on the training values (T, C)."""
    if len(train) <= season:
        raise ConfigError(f"MASE needs more than season = {season} training points, got {len(train)}")
    scale = np.abs(train[season:] - train[:-season]).mean(axis=0)
    return np.where(scale > 0, scale, 1.0)


def mase(forecast: np.ndarray, target: np.ndarray, scale: np.ndarray) -> float:
    """Mean absolute error divided, channel by channel, by the training seasonal-naive error (mase_scale)."""
    return float(np.mean(np.abs(forecast - target) / scale))
