"""Scoring a forecaster on the test split of a series, per channel, in the series' standardised units."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .config import frequency_token
from .data import Series, require_windows, split_bounds, split_windows, standardised
from .metrics import mase, mase_scale, mse, seasonal_naive
from .model import TinyTimeMixer
from .train import predict

Forecaster = Callable[[np.ndarray], np.ndarray]  # past (N, L, C) → forecast (N, H, C)


def score_test_split(series: Series, forecaster: Forecaster, context: int, horizon: int) -> dict[str, dict[str, float]]:
    """{channel name: {"mse", "mase"}} over the test windows; MSE in units of the training split's std."""
    series = standardised(series)
    past, future = split_windows(series, context, horizon, "test")
    require_windows(series, past, "test", context, horizon)
    forecast = forecaster(past)
    _, train_end = split_bounds(len(series.values))["train"]
    scale = mase_scale(series.values[:train_end], series.season)
    names = channel_names(series)
    return {names[c]: {"mse": mse(forecast[..., c], future[..., c]),
                       "mase": mase(forecast[..., c], future[..., c], scale[c])} for c in range(len(names))}


def channel_names(series: Series) -> list[str]:
    channels = series.values.shape[1]
    if series.channels:
        return [f"{series.name}/{c}" for c in series.channels]
    return [series.name] if channels == 1 else [f"{series.name}/{c}" for c in range(channels)]


def ttm_forecaster(model: TinyTimeMixer, series: Series) -> Forecaster:
    """Channel-independent unless the model's decoder mixes channels."""
    token = frequency_token(series.frequency)

    def forecast(past: np.ndarray) -> np.ndarray:
        if model.cfg.decoder_mode == "mix_channel":
            return predict(model, past, token)
        n, length, channels = past.shape
        flat = predict(model, past.transpose(0, 2, 1).reshape(-1, length, 1), token)
        return flat.reshape(n, channels, -1).transpose(0, 2, 1)
    return forecast


def naive_forecaster(season: int, horizon: int) -> Forecaster:
    return lambda past: seasonal_naive(past, horizon, season)
