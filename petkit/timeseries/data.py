"""Series, chronological splits, forecast windows and per-series scaling.

A series is an array (T, C) with a resolution ("M", "Q", ...) and a season length (for seasonal-naive
and MASE). Splits are by time (70/10/20 by default). A window of a split has its whole horizon inside
the split; its context may reach back into earlier splits (as the standard long-horizon benchmarks),
never forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from petkit.core.errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Series:
    name: str
    values: np.ndarray          # (T, C) float32, no NaN
    frequency: str = "oov"      # a key of config.FREQUENCY_TOKENS
    season: int = 1             # period for seasonal-naive and MASE (1: naive)
    channels: tuple = ()        # channel names (default: name/0, name/1, ...)

    def __post_init__(self):
        values = np.asarray(self.values, dtype=np.float32)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2:
            raise ConfigError(f"series {self.name!r} must be 1-D or (time, channels), got shape {values.shape}")
        if np.isnan(values).any():
            where = int(np.argwhere(np.isnan(values))[0][0])
            raise ConfigError(f"series {self.name!r} has NaN values (first at time step {where}): "
                              "fill or drop them before forecasting")
        object.__setattr__(self, "values", values)
        if self.channels and len(self.channels) != values.shape[1]:
            raise ConfigError(f"series {self.name!r} names {len(self.channels)} channels but has {values.shape[1]}")


def check_length(series: Series, context: int, horizon: int, minimum_windows: int = 1) -> None:
    need = context + horizon + minimum_windows - 1
    if len(series.values) < need:
        what = f"context + horizon = {context} + {horizon} = {context + horizon}" if horizon else f"context = {context}"
        raise ConfigError(f"series {series.name!r} has {len(series.values)} points; a forecast needs at least {what}"
                          + (f" (and {minimum_windows} windows: {need})" if minimum_windows > 1 else ""))


def require_windows(series: Series, past: np.ndarray, split: str, context: int, horizon: int) -> None:
    """One clear error when a split of the series is too short to hold a single window."""
    if not len(past):
        raise ConfigError(f"series {series.name!r} ({len(series.values)} points) has no {split} window: its {split} "
                          f"split is too short for context + horizon = {context} + {horizon}; use a longer series "
                          "or a shorter context")


def split_bounds(length: int, fractions=(0.7, 0.1, 0.2)) -> dict[str, tuple[int, int]]:
    """[start, stop) of each split in time."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    train_end = int(round(length * fractions[0]))
    val_end = min(length, train_end + int(round(length * fractions[1])))
    return {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, length)}


def windows(values: np.ndarray, context: int, horizon: int, start: int = 0, stop: int | None = None,
            stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(past (N, L, C), future (N, H, C)) for every forecast origin t with the horizon values[t : t+H] inside
    [start, stop) and the context values[t-L : t] just before it."""
    stop = len(values) if stop is None else min(stop, len(values))
    origins = range(max(start, context), stop - horizon + 1, stride)
    if not origins:
        empty = np.zeros((0, context, values.shape[1]), np.float32)
        return empty, np.zeros((0, horizon, values.shape[1]), np.float32)
    past = np.stack([values[t - context:t] for t in origins])
    future = np.stack([values[t:t + horizon] for t in origins])
    return past, future


def split_windows(series: Series, context: int, horizon: int, split: str, fractions=(0.7, 0.1, 0.2)):
    """The windows of one split of a series (values as stored: scale them first with SeriesScaler)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    start, stop = split_bounds(len(series.values), fractions)[split]
    return windows(series.values, context, horizon, start, stop)


def few_shot(past: np.ndarray, future: np.ndarray, fraction: float, location: str = "first"):
    """The first (default, the released load_dataset's) or last `fraction` of the windows in time, at least one."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"few-shot fraction must be in (0, 1], got {fraction}")
    if location not in ("first", "last"):
        raise ConfigError(f"few-shot location must be 'first' or 'last', got {location!r}")
    n = max(1, math.ceil(fraction * len(past)))
    keep = slice(0, n) if location == "first" else slice(len(past) - n, len(past))
    return past[keep], future[keep]


@dataclass(frozen=True)
class SeriesScaler:
    """Per-series, per-channel standard scaling fitted on the training split: the units every method is
    trained and scored in. (TTM also scales each window, RevIN-style, inside the model.)"""
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> SeriesScaler:
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(std > 0, std, 1.0).astype(np.float32))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return (values * self.std + self.mean).astype(np.float32)


def standardised(series: Series, fractions=(0.7, 0.1, 0.2)) -> Series:
    """The series in units of its training split (mean 0, std 1 there)."""
    _, train_end = split_bounds(len(series.values), fractions)["train"]
    scaler = SeriesScaler.fit(series.values[:train_end])
    return Series(series.name, scaler.transform(series.values), series.frequency, series.season, series.channels)


def channel_independent(past: np.ndarray, future: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, L, C) → (N·C, L, 1): every channel its own univariate series (how TTM pre-trains)."""
    flat = lambda a: a.transpose(0, 2, 1).reshape(-1, a.shape[1], 1)  # noqa: E731
    return flat(past), flat(future)


def read_csv_series(path, column: str, frequency: str = "oov", season: int = 1) -> Series:
    """One numeric column of a CSV file with a header row, as a series (empty cells become NaN and are refused)."""
    import csv
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if column not in (reader.fieldnames or []):
            raise ConfigError(f"{path} has no column {column!r}; its columns are {reader.fieldnames}")
        values = []
        for line, row in enumerate(reader, start=2):
            cell = (row[column] or "").strip()
            try:
                values.append(float(cell) if cell else float("nan"))
            except ValueError:
                raise ConfigError(f"{path} line {line}: {column} = {cell!r} is not a number") from None
    return Series(f"{path.stem}/{column}", np.array(values, dtype=np.float32), frequency, season)
