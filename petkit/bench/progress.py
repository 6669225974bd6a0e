"""One rich progress view for the whole grid: runs done of all, the current run, elapsed and ETA.

The ETA is (runs left) x (mean wall time of the runs executed so far in this session) / (runs at
once): runs skipped because results.jsonl already holds them take no time and must not shorten it.
Several runs may be under way at once (bench jobs): start() returns a handle that finish() takes.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from petkit.train.progress import LiveProgress


class GridProgress(LiveProgress):
    def __init__(self, total: int, enabled: bool = True, log=None, jobs: int = 1):
        self.total, self.done, self.ran, self.busy, self.jobs = total, 0, 0, 0.0, jobs
        self._log = log
        self._running: dict[int, tuple[str, float]] = {}  # handle -> (label, start time)
        self._next = 0
        self._progress = Progress(
            TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[current]}"),
            console=Console(stderr=True),
        ) if enabled else None
        if self._progress:
            self._task = self._progress.add_task("grid", total=total, eta="-", current="")

    def start(self, label: str) -> int:
        self._next += 1
        self._running[self._next] = (label, time.perf_counter())
        self._update(current=self._current())
        return self._next

    def finish(self, handle: int | None = None, message: str | None = None) -> None:
        """The run `handle` (from start()) ended, with one line about it; no handle: a run was skipped."""
        if handle is not None:
            _, started = self._running.pop(handle)
            self.busy += time.perf_counter() - started
            self.ran += 1
        self.done += 1
        left = self.total - self.done
        eta = _duration(left * self.busy / self.ran / self.jobs) if self.ran and left else ("0s" if not left else "-")
        self._update(advance=1, eta=eta, current=self._current())
        if message:
            self.log(message)

    def grow(self, count: int = 1) -> None:
        """The grid turned out larger (a learning-rate search went past its edge)."""
        self.total += count
        if self._progress:
            self._progress.update(self._task, total=self.total)

    def skip(self, count: int = 1) -> None:
        for _ in range(count):
            self.finish()

    def _current(self) -> str:
        return " | ".join(label for label, _ in self._running.values())

    def log(self, message: str) -> None:
        if self._progress:
            self._progress.console.print(message)
        elif self._log:
            self._log(message)

    def _update(self, **fields) -> None:
        if self._progress:
            self._progress.update(self._task, **fields)


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m{s:02d}s" if minutes else f"{s}s"
