"""Timing several functions side by side: warmed up, each measurement repeated to last about `budget_s`,
the order rotated every round so drift and caches hit every function alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_interleaved(fns: dict[str, Callable], rounds: int, clocks: dict[str, Callable], budget_s: float = 0.002):
    """{clock name: {function name: [milliseconds per call, one per round]}} for every clock in `clocks`
    (e.g. {"wall": time.perf_counter, "cpu": time.process_time}), all read around the same calls."""
    names = list(fns)
    inner = {}
    for n in names:  # warm up, and pick `inner` so one measurement lasts about budget_s
        fns[n]()
        t = time.perf_counter()
        fns[n]()
        inner[n] = max(1, int(budget_s / max(time.perf_counter() - t, 1e-7)))
    times = {c: {n: [] for n in names} for c in clocks}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            start = {c: clock() for c, clock in clocks.items()}
            for _ in range(inner[n]):
                fns[n]()
            for c, clock in clocks.items():
                times[c][n].append((clock() - start[c]) / inner[n] * 1e3)
    return times
