"""Real series that statsmodels ships offline: the pre-training pool and the held-out targets.

Pool (pre-training), with "diverse resolution sampling" (downsampled copies kept beside the originals):
co2 weekly → monthly → quarterly means, elnino monthly → quarterly, sunspots (yearly), nile (yearly),
interest_inflation (quarterly, 2 channels), and Victoria's hourly electricity demand → daily when the
installed statsmodels carries its test data. Held out (never in the pool): macrodata's 12 quarterly
columns and elec_equip (monthly).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from petkit.core.errors import MissingExtra

from .data import Series

MACRO_COLUMNS = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate", "unemp", "pop",
                 "infl", "realint")


def _datasets():
    try:
        import statsmodels.api as sm
    except ImportError:
        raise MissingExtra("the statsmodels series need statsmodels: pip install 'petkit[timeseries]'") from None
    return sm.datasets


def _means(values: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping means of `size` consecutive points (the downsampled copy)."""
    n = len(values) // size
    return values[: n * size].reshape(n, size, *values.shape[1:]).mean(axis=1)


def pool_series() -> list[Series]:
    d = _datasets()
    co2 = d.co2.load_pandas().data["co2"].interpolate().bfill().to_numpy(np.float32)  # 59 weekly gaps
    elnino = d.elnino.load_pandas().data.drop(columns="YEAR").to_numpy(np.float32).reshape(-1)
    pool = [Series("co2", co2, "W", 52), Series("co2-monthly", _means(co2, 4), "M", 12),
            Series("co2-quarterly", _means(co2, 13), "Q", 4),
            Series("elnino", elnino, "M", 12), Series("elnino-quarterly", _means(elnino, 3), "Q", 4),
            Series("sunspots", d.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float32), "Y", 11),
            Series("nile", d.nile.load_pandas().data["volume"].to_numpy(np.float32), "Y", 1),
            Series("interest-inflation", d.interest_inflation.load_pandas().data[["Dp", "R"]].to_numpy(np.float32),
                   "Q", 4)]
    vic = Path(d.__file__).parent.parent / "tsa" / "stl" / "tests" / "results" / "mstl_elec_vic.csv"
    if vic.is_file():
        hourly = np.loadtxt(vic, delimiter=",", skiprows=1, usecols=1, dtype=np.float32)
        pool += [Series("elec-vic", hourly, "h", 24), Series("elec-vic-daily", _means(hourly, 24), "d", 7)]
    return pool


def held_out_series() -> list[Series]:
    d = _datasets()
    macro = d.macrodata.load_pandas().data[list(MACRO_COLUMNS)].to_numpy(np.float32)
    from statsmodels.datasets import elec_equip  # not re-exported by statsmodels.datasets
    elec = elec_equip.load().data.iloc[:, 0].to_numpy(np.float32)
    return [Series("macrodata", macro, "Q", 4, MACRO_COLUMNS), Series("elec_equip", elec, "M", 12)]
