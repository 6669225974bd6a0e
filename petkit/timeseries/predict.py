"""Forecasting the steps after the end of a series with a trained TTM."""

from __future__ import annotations

import numpy as np

from .config import frequency_token
from .data import Series, SeriesScaler, check_length
from .model import TinyTimeMixer
from .train import predict


def forecast_next(model: TinyTimeMixer, series: Series) -> np.ndarray:
    """(H, C): the forecast after the last context_length points, in the series' own units. The series is
    standardised by its own statistics first (the units the model was trained in) and the forecast mapped back."""
    cfg = model.cfg
    check_length(series, cfg.context_length, 0)
    scaler = SeriesScaler.fit(series.values)
    past = scaler.transform(series.values[-cfg.context_length:])
    token = frequency_token(series.frequency)
    if cfg.decoder_mode == "mix_channel":
        out = predict(model, past[None], token)[0]
    else:
        out = predict(model, past.T[:, :, None], token)[:, :, 0].T
    return scaler.inverse(out)
