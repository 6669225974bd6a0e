"""A rich progress bar showing step, loss, learning rate and throughput (or nothing at all)."""

from __future__ import annotations

import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class LiveProgress:
    """A rich Progress (or None when disabled) shown for the length of a `with` block."""

    _progress: Progress | None = None

    def __enter__(self):
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress:
            self._progress.stop()


class ProgressBar(LiveProgress):
    """``with ProgressBar(total, start, unit, enabled) as bar: bar.update(loss=..., lr=..., items=...)``.

    ``unit`` is what throughput counts: "samples" for classification, "tokens" for language models.
    """

    def __init__(self, total_steps: int, start_step: int, unit: str, enabled: bool = True):
        self.unit, self.enabled = unit, enabled
        self.items, self.started = 0, time.perf_counter()
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]}"),
                TimeElapsedColumn(), TimeRemainingColumn(),
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step,
                                                 loss="-", lr="-", speed="-")

    def throughput(self) -> float:
        """Items per second since this run (or resume) began."""
        return self.items / max(time.perf_counter() - self.started, 1e-9)

    def update(self, loss: float, lr: float, items: int) -> None:
        """Advance one optimizer step that consumed ``items`` samples or tokens."""
        self.items += items
        if self._progress:
            self._progress.update(self._task, advance=1, loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                  speed=f"{self.throughput():,.0f} {self.unit}/s")

    def log(self, message: str) -> None:
        if self._progress:
            self._progress.console.print(message)
