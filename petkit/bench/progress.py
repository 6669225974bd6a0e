"""One rich progress view for the whole grid: runs done of all, the current run, elapsed and ETA.

The ETA is (runs left) x (mean wall time of the runs executed so far in this session): runs
skipped because results.jsonl already holds them take no time and must not shorten it.
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


class GridProgress:
    def __init__(self, total: int, enabled: bool = True, log=None):
        self.total, self.done, self.ran, self.busy = total, 0, 0, 0.0
        self._log, self._started = log, None
        self._progress = Progress(
            TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[current]}"),
            console=Console(stderr=True),
        ) if enabled else None
        if self._progress:
            self._task = self._progress.add_task("grid", total=total, eta="-", current="")

    def __enter__(self) -> GridProgress:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress:
            self._progress.stop()

    def start(self, label: str) -> None:
        self._started = time.perf_counter()
        self._update(current=label)

    def finish(self, message: str | None = None) -> None:
        """The current run ended (message: one line about it), or a run was skipped (no start())."""
        if self._started is not None:
            self.busy += time.perf_counter() - self._started
            self.ran += 1
            self._started = None
        self.done += 1
        left = self.total - self.done
        eta = _duration(left * self.busy / self.ran) if self.ran and left else ("0s" if not left else "-")
        self._update(advance=1, eta=eta, current="")
        if message:
            self.log(message)

    def skip(self, count: int = 1) -> None:
        for _ in range(count):
            self.finish()

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
