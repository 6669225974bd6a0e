"""From run records to one `Cell` per (library, method, task): the runs at the chosen learning rate.

Learning-rate protocol: seed 0 runs every rate of the method's grid; the rate with the best dev
accuracy (ties: lower dev loss, then the smaller rate) is chosen; on a language-modelling task (scored
by test perplexity, lower is better) the lowest dev loss wins (ties: the smaller rate). While the
choice sits at an edge of the rates searched so far, the search adds one rate past that edge (the
grid's own spacing there) and chooses again, at most `extend` times per side, so that a chosen rate
is an interior optimum or is marked as not being one. Seeds 1..n-1 then run at the chosen rate only;
seed 0's run there is one of the n. PEFT twins run at petkit's chosen rate.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from petkit.bench.config import BenchConfig


def task_name(task: str) -> str:
    """How a task is shown: a data file by its stem (`data/toy.csv` -> `toy`), a named dataset as is."""
    return Path(task).stem if Path(task).suffix else task


def metric_of(run: dict) -> str:
    """What a finished run is scored by: "accuracy" (classification) or "perplexity" (language modelling)."""
    return "accuracy" if "accuracy" in run["test"] else "perplexity"


def higher_is_better(metric: str) -> bool:
    return metric == "accuracy"


def ok_runs(records: list[dict], **match) -> list[dict]:
    return [r for r in records if r.get("status") == "ok" and all(r[k] == v for k, v in match.items())]


def choose_lr(records: list[dict], method: str, task: str, grid) -> float | None:
    runs = [r for r in ok_runs(records, library="petkit", method=method, task=task, seed=0) if r["lr"] in grid]
    if not runs:
        return None
    if metric_of(runs[0]) == "perplexity":  # dev perplexity is exp(dev loss): the same order
        return min(runs, key=lambda r: (r["dev"]["loss"], r["lr"]))["lr"]
    return max(runs, key=lambda r: (r["dev"]["accuracy"], -r["dev"]["loss"], -r["lr"]))["lr"]


@dataclass(frozen=True)
class Search:
    """Where the learning-rate search of one (method, task) stands."""
    rates: tuple[float, ...]   # the rates searched: the configured grid plus the points added past its edges
    chosen: float | None       # the best of them on dev (None: no run at any of them finished)
    pending: float | None      # the next rate to try past an edge, when the search is not finished

    @property
    def edge(self) -> str | None:
        """"lower"/"upper" when the chosen rate is the smallest/largest of several searched; None when interior."""
        if self.chosen is None or len(self.rates) < 2:
            return None
        return "lower" if self.chosen == self.rates[0] else "upper" if self.chosen == self.rates[-1] else None


def lr_search(records: list[dict], method: str, task: str, grid, extend: int) -> Search:
    """Replay the search over the finished seed-0 runs of `records` (the runner and the report both use it,
    so they agree on which rates were searched and which was chosen)."""
    rates = sorted(set(grid))
    added = {"lower": 0, "upper": 0}
    while True:
        search = Search(tuple(rates), choose_lr(records, method, task, rates), None)
        side = search.edge
        if side is None or added[side] >= extend:
            return search
        # the spacing of the two outermost rates on that side, one step further out
        step = rates[-1] / rates[-2] if side == "upper" else rates[0] / rates[1]
        nxt = float(f"{(rates[-1] if side == 'upper' else rates[0]) * step:.6g}")
        if not 0 < nxt < 1:
            return search
        if not ok_runs(records, library="petkit", method=method, task=task, seed=0, lr=nxt):
            return Search(search.rates, search.chosen, nxt)
        rates = sorted([*rates, nxt])
        added[side] += 1


@dataclass
class Cell:
    library: str
    method: str
    task: str
    lr: float
    runs: list[dict]
    search: Search | None = None  # how lr was chosen (petkit cells; PEFT twins run at petkit's rate)

    def median(self, *path: str) -> float:
        """Median over seeds of a (nested) field; NaN when no run has it (e.g. merged time of an unmergeable method)."""
        values = []
        for r in self.runs:
            v = r
            for k in path:
                v = v.get(k) if isinstance(v, dict) else None
            if v is not None:
                values.append(v)
        return statistics.median(values) if values else math.nan

    def spread(self, key: str) -> float:
        """max / min over seeds of a positive field (1 = every seed measured the same); NaN with < 2 runs."""
        values = [r[key] for r in self.runs if r.get(key)]
        return max(values) / min(values) if len(values) > 1 and min(values) > 0 else math.nan

    @property
    def metric(self) -> str:
        """"accuracy" (higher is better) or "perplexity" (language modelling, lower is better)."""
        return metric_of(self.runs[0])

    @property
    def scores(self) -> list[float]:
        return [r["test"][self.metric] for r in self.runs]

    @property
    def score_mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def score_std(self) -> float:
        return statistics.stdev(self.scores) if len(self.runs) > 1 else 0.0

    # the classification names (a classification cell's score is its test accuracy)
    accuracies = scores
    acc_mean = score_mean
    acc_std = score_std


def cells(records: list[dict], config: BenchConfig) -> dict[tuple[str, str, str], Cell]:
    """Every (library, method, task) of config with at least one finished run at the chosen rate."""
    out = {}
    for task in config.tasks:
        for method in config.methods:
            search = lr_search(records, method, task, config.lr_grid(method), config.extend)
            lr = search.chosen
            if lr is None:
                continue
            for library in ("petkit", "peft"):
                runs = [r for r in ok_runs(records, library=library, method=method, task=task, lr=lr)
                        if r["seed"] < config.seeds]
                if runs:
                    runs.sort(key=lambda r: r["seed"])
                    out[(library, method, task)] = Cell(library, method, task, lr, runs, search)
    return out
