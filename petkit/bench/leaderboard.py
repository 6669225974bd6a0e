"""The leaderboard's numbers: one row per method, ordered by a rank aggregation over the tasks.

Accuracy per task is the mean (± sample standard deviation) of the test accuracy over seeds at the
learning rate chosen on dev; a language-modelling task is scored the same way by test perplexity
(`ppl_mean`/`ppl_std` in its cells instead of `acc_mean`/`acc_std`; lower is better, also in the ranking). Efficiency columns are medians over seeds, then over tasks. Ratios are
against baselines measured in the same bench: training memory and step time against full
fine-tuning on the same task (when `full` is in the grid), inference against the frozen base model
timed in the same process and rounds as the adapted one (see measure.py).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from petkit.bench.config import BenchConfig
from petkit.bench.summary import Cell, cells, higher_is_better

KEYS = {"accuracy": "acc", "perplexity": "ppl"}  # how a metric is abbreviated in the board's keys


@dataclass
class Board:
    rows: list[dict]                 # ordered best first by `ordered_by`
    tasks: list[str]
    ordered_by: str                  # "borda" | "kemeny" | "mean"
    statement: str                   # one line: which aggregation ordered it, and how
    rankings: dict = field(default_factory=dict)  # rule -> petkit.analysis Ranking.as_dict()
    peft: list[dict] = field(default_factory=list)  # petkit / PEFT ratios per (method, task)
    baseline: str = "full"           # rows' *_vs_baseline divide by this method's runs
    # metric -> places after the point (accuracy in %) at which the ranking compared scores (None: exactly)
    rank_decimals: dict = field(default_factory=dict)


def build(config: BenchConfig, records: list[dict]) -> Board:
    table = cells(records, config)
    tasks = list(config.tasks)
    rows = [_row(config, m, table) for m in config.methods if any(("petkit", m, t) in table for t in tasks)]
    board = Board(rows, tasks, config.order_by, "no finished runs yet", baseline=config.ratio_to)
    if rows:
        _rank(board, config)
    board.peft = [_peft_row(table[("petkit", m, t)], table[("peft", m, t)])
                  for m in config.methods for t in tasks if ("peft", m, t) in table and ("petkit", m, t) in table]
    return board


def task_score(cell: dict) -> tuple[str, float, float]:
    """(metric, mean, std) of one row's cell for a task (the cell is `row["tasks"][task]`)."""
    if "ppl_mean" in cell:
        return "perplexity", cell["ppl_mean"], cell["ppl_std"]
    return "accuracy", cell["acc_mean"], cell["acc_std"]


def task_metric(board: Board, task: str) -> str | None:
    """What `task` is scored by on this board (None when no method finished it)."""
    return next((task_score(r["tasks"][task])[0] for r in board.rows if task in r["tasks"]), None)


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan  # in-process memory can read 0: no ratio then


def _median(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _row(config: BenchConfig, method: str, table: dict) -> dict:
    mine = {t: table[("petkit", method, t)] for t in config.tasks if ("petkit", method, t) in table}
    base = config.ratio_to
    ref = {t: table[("petkit", base, t)] for t in config.tasks if ("petkit", base, t) in table}

    def vs_baseline(*path):
        return _median(_div(c.median(*path), ref[t].median(*path)) for t, c in mine.items() if t in ref)

    params = _median(c.median("trainable_params") for c in mine.values())
    accs = [c.score_mean for c in mine.values() if c.metric == "accuracy"]
    ppls = [c.score_mean for c in mine.values() if c.metric == "perplexity"]
    return {
        "method": method, "family": config.family(method),
        "tasks": {t: {f"{KEYS[c.metric]}_mean": c.score_mean, f"{KEYS[c.metric]}_std": c.score_std,
                      "seeds": len(c.runs), "lr": c.lr, "lr_searched": list(c.search.rates),
                      "lr_edge": c.search.edge, "params": c.median("trainable_params")}
                  for t, c in mine.items()},
        "mean_acc": statistics.fmean(accs) if accs else math.nan,  # over the classification tasks
        **({"mean_ppl": statistics.fmean(ppls)} if ppls else {}),   # over the language-modelling tasks
        "params": params, "params_pct": 100 * _div(params, _median(c.median("base_params") for c in mine.values())),
        "adapter_bytes": _median(c.median("adapter_bytes") for c in mine.values()),
        "train_mb": _median(c.median("train_mb") for c in mine.values()),
        "peak_rss_mb": _median(c.median("peak_rss_mb") for c in mine.values()),
        "train_mb_vs_baseline": vs_baseline("train_mb"),
        "step_ms": 1000 * _median(c.median("step_s") for c in mine.values()),
        "step_vs_baseline": vs_baseline("step_s"),
        "unmerged_vs_base": _median(c.median("inference", "unmerged_ratio") for c in mine.values()),
        "merged_vs_base": _median(c.median("inference", "merged_ratio") for c in mine.values()),
    }


def _rank(board: Board, config: BenchConfig) -> None:
    """Mean, Borda and Kemeny over the tasks (criteria = test accuracy per task, higher is better; test
    perplexity for a language-modelling task, lower is better), comparing scores at `config.rank_places`."""
    from petkit.analysis.ranking import ScoreTable, compare

    methods = [r["method"] for r in board.rows]
    # a task where every run failed has no scores, so no say
    tasks = [t for t in board.tasks if any(t in r["tasks"] for r in board.rows)]
    scores = [[task_score(r["tasks"][t])[1] if t in r["tasks"] else math.nan for t in tasks] for r in board.rows]
    metrics = [task_metric(board, t) for t in tasks]
    board.rank_decimals = {m: config.rank_places(m) for m in dict.fromkeys(metrics)}
    decimals = [_stored_places(m, board.rank_decimals[m]) for m in metrics]
    comparison = compare(ScoreTable(methods, tasks, scores, higher_is_better=[higher_is_better(m) for m in metrics],
                                    decimals=decimals))
    board.rankings = {r.rule: r.as_dict() for r in comparison.rankings}
    chosen = getattr(comparison, config.order_by)
    board.statement = chosen.statement
    for rule in ("borda", "kemeny"):
        ranking = getattr(comparison, rule)
        for row in board.rows:
            row[f"{rule}_position"] = ranking.position(row["method"]) + 1 if row["method"] in ranking.systems else None
            row[f"{rule}_score"] = dict(zip(ranking.systems, ranking.scores)).get(row["method"])
    for row in board.rows:  # 1-based lowest and highest position over all optimal Kemeny orders
        if row["method"] in comparison.kemeny.systems:
            row["kemeny_range"] = [p + 1 for p in comparison.kemeny.position_range(row["method"])]
    board.rows.sort(key=lambda row: chosen.position(row["method"]) if row["method"] in chosen.systems else len(methods))


def _stored_places(metric: str, places: int | None) -> int | None:
    """Printed places -> places of the stored score: accuracy is a fraction here but printed in %."""
    return None if places is None else places + (2 if metric == "accuracy" else 0)


def _spread(ours: Cell, theirs: Cell, key: str) -> float:
    spreads = [s for s in (ours.spread(key), theirs.spread(key)) if not math.isnan(s)]
    return max(spreads, default=math.nan)


def _peft_row(ours: Cell, theirs: Cell) -> dict:
    """petkit / PEFT for one method and task (below 1: petkit is smaller or faster).

    Inference compares each library's ratio to the frozen base timed beside it, so the drift between
    the two processes cancels; step time and memory are plain ratios of the two runs' medians. Their
    `*_spread` is the larger of the two libraries' seed spreads (max / min): how far apart runs of the
    same code land, the scale below which a ratio is not a measured difference."""
    def ratio(*path):
        return _div(ours.median(*path), theirs.median(*path))

    key = KEYS[ours.metric]  # petkit_acc, peft_acc, acc; or petkit_ppl, peft_ppl, ppl for language modelling
    return {"method": ours.method, "task": ours.task, "lr": ours.lr, "seeds": min(len(ours.runs), len(theirs.runs)),
            f"petkit_{key}": ours.score_mean, f"peft_{key}": theirs.score_mean,
            key: _div(ours.score_mean, theirs.score_mean),
            "step": ratio("step_s"), "train_mb": ratio("train_mb"),
            "step_spread": _spread(ours, theirs, "step_s"), "train_mb_spread": _spread(ours, theirs, "train_mb"), "adapter_bytes": ratio("adapter_bytes"),
            "unmerged": ratio("inference", "unmerged_ratio"), "merged": ratio("inference", "merged_ratio")}
