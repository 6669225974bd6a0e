"""`leaderboard.md` (+ `leaderboard.json` and the PNG plots) from results.jsonl. Never typed by hand:
`petkit bench --report-only` rewrites them from the results file."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from petkit.bench.config import PRINTED_DECIMALS, WARMUP_STEPS, BenchConfig
from petkit.bench.leaderboard import Board, build, task_metric, task_score
from petkit.bench.machine import recorded
from petkit.bench.results import key_of
from petkit.bench.summary import task_name

EDGE_MARK = " †"  # after a score whose learning rate was chosen at an edge of the searched rates
PLOTS = {"accuracy_vs_params.png": "test accuracy against trainable parameters",
         "memory_time.png": "training memory and step time",
         "heatmap.png": "test accuracy per method and task"}


def write_report(out: Path, config: BenchConfig, records: list[dict]) -> Board:
    board = build(config, records)
    if board.rows:
        from petkit.bench.plots import write_plots
        write_plots(out, board)
    (out / "leaderboard.md").write_text(render(board, config, records), encoding="utf-8")
    (out / "leaderboard.json").write_text(json.dumps(dataclasses.asdict(board), indent=1) + "\n", encoding="utf-8")
    return board


# -- formatting ------------------------------------------------------------------------------------

def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _acc(mean, std=None) -> str:
    if _missing(mean):
        return "–"
    d = PRINTED_DECIMALS["accuracy"]
    return f"{100 * mean:.{d}f}" + ("" if std is None else f" ± {100 * std:.{d}f}")


def _ppl(mean, std=None) -> str:
    if _missing(mean):
        return "–"
    d = PRINTED_DECIMALS["perplexity"]
    return f"{mean:.{d}f}" + ("" if std is None else f" ± {std:.{d}f}")


def _score(metric: str, mean, std=None) -> str:
    return _ppl(mean, std) if metric == "perplexity" else _acc(mean, std)


def _x(ratio) -> str:
    return "–" if _missing(ratio) else f"{ratio:.2f}×"


def _count(n) -> str:
    if _missing(n):
        return "–"
    for size, unit in ((1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def _bytes(n) -> str:
    if _missing(n):
        return "–"
    for size, unit in ((2**20, "MiB"), (2**10, "KiB")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _pct(x) -> str:
    return "–" if _missing(x) else f"{x:.3g}%"


def _num(x, digits: int = 0) -> str:
    return "–" if _missing(x) else f"{x:.{digits}f}"


# -- the document ----------------------------------------------------------------------------------

def render(board: Board, config: BenchConfig, records: list[dict]) -> str:
    names = [task_name(t) for t in board.tasks]
    metrics = {task_metric(board, t) for t in board.tasks}
    lm = _lm_tasks(board, config)
    lines = [f"# petkit bench: {Path(config.model).name if os.sep in config.model else config.model}", "",
             f"{len(board.rows)} methods × {len(board.tasks)} tasks ({', '.join(names)}) × {config.seeds} seeds; "
             f"{config.steps} steps of {config.batch_size} examples at ≤ {config.max_length} tokens; "
             f"≤ {config.max_train or 'all'} train and ≤ {config.max_eval or 'all'} dev / test examples per task.",
             "Accuracy: test accuracy (%), mean ± standard deviation over seeds, at the learning rate chosen "
             "on dev.", ""]
    if lm:
        lines[-2:-1] = [("Accuracy: test accuracy (%) on classification tasks; p" if len(lm) < len(board.tasks) else "P")
                        + f"erplexity (lower is better) on the language-modelling task{'s' * (len(lm) > 1)} "
                        f"{', '.join(task_name(t) for t in lm)}: test perplexity, mean ± standard deviation over "
                        "seeds, at the learning rate chosen on dev loss."]
    if not board.rows:
        return "\n".join(lines + ["No finished runs yet.", ""] + _failures(records))
    lines += [f"**{board.statement}**", ""]
    lines += _edge_note(board, config)
    lines += _main_table(board, names, metrics)
    lines += ["", "Ranks: Borda points (systems beaten, summed over tasks) and the Kemeny consensus position, "
              "beside the plain mean; all three come from `petkit.analysis.ranking`. " + _tie_note(board)
              + _kemeny_note(board) + "Memory and step time "
              f"are medians over seeds and tasks; \"× {board.baseline}\" divides by {_baseline_name(board)} on the same task; "
              "inference \"× base\" divides by the frozen model timed alongside (see Protocol).", ""]
    lines += [f"![{what}]({file})" for file, what in PLOTS.items()] + [""]
    if lm:
        from petkit.bench.plots import plot_note
        lines += [plot_note(board), ""]
    lines += _lr_table(board, names)
    if board.peft:
        lines += _peft_table(board)
    lines += _protocol(config, records, bool(lm)) + _failures(records)
    return "\n".join(lines) + "\n"


def _baseline_name(board: Board) -> str:
    return "full fine-tuning" if board.baseline == "full" else f"`{board.baseline}`"


def _lm_tasks(board: Board, config: BenchConfig) -> list[str]:
    return [t for t in board.tasks if task_metric(board, t) == "perplexity"]


def _main_table(board: Board, names: list[str], metrics: set) -> list[str]:
    # classification only: one "mean" (accuracy) column, as always; with language-modelling tasks the
    # accuracy and perplexity means are separate columns (a mean across the two means nothing)
    means = ["mean"] if "perplexity" not in metrics else (["mean acc"] if "accuracy" in metrics else []) + ["mean ppl"]
    head = (["#", "method", "family"] + names + means + ["Borda", "Kemeny", "trainable params", "% of base",
            "adapter size", "train memory MB", f"× {board.baseline}", "step ms", f"× {board.baseline}",
            "inference unmerged × base",
            "merged × base"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, r in enumerate(board.rows, start=1):
        accs = [_score(*task_score(r["tasks"][t])) + EDGE_MARK * bool(r["tasks"][t].get("lr_edge"))
                if t in r["tasks"] else "–" for t in board.tasks]
        mean = ([_acc(r["mean_acc"])] if means[0] in ("mean", "mean acc") else []) + \
               ([_ppl(r.get("mean_ppl"))] if "mean ppl" in means else [])
        cells = ([str(k), f"`{r['method']}`", r["family"]] + accs + mean +
                 [_num(r.get("borda_score"), 1), _positions(r),
                  _count(r["params"]), _pct(r["params_pct"]), _bytes(r["adapter_bytes"]), _num(r["train_mb"]),
                  _x(r["train_mb_vs_baseline"]), _num(r["step_ms"]), _x(r["step_vs_baseline"]),
                  _x(r["unmerged_vs_base"]), _x(r["merged_vs_base"])])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def edge_counts(board: Board) -> tuple[int, int]:
    """(cells whose rate was chosen from several, of them the ones chosen at an edge of the searched rates)."""
    searched = [c for r in board.rows for c in r["tasks"].values() if len(c.get("lr_searched", ())) > 1]
    return len(searched), sum(bool(c["lr_edge"]) for c in searched)


def _edge_note(board: Board, config: BenchConfig) -> list[str]:
    searched, edges = edge_counts(board)
    if not searched:
        return []
    return [f"Learning rate: an interior optimum of its searched rates in {searched - edges} of {searched} cells; "
            f"{EDGE_MARK.strip()} marks a cell whose rate is still the smallest or largest searched after up to "
            f"{config.extend} more rate{'s' * (config.extend != 1)} per side (its optimum may lie beyond the grid).", ""]


def _lr_cell(cell: dict) -> str:
    arrow = {"lower": " ↓ (lower edge)", "upper": " ↑ (upper edge)"}.get(cell.get("lr_edge"), "")
    rates = cell.get("lr_searched", [cell["lr"]])
    return f"**{cell['lr']:g}**{arrow} of {', '.join(f'{x:g}' for x in rates)}" if len(rates) > 1 else f"{cell['lr']:g}"


def _positions(row: dict) -> str:
    """The Kemeny position, or the range of positions when several optimal orders place it differently."""
    low, high = row.get("kemeny_range") or [row.get("kemeny_position")] * 2
    return _num(low) if low == high else f"{low}–{high}"


def _tie_note(board: Board) -> str:
    """Which precision Borda and Kemeny compared scores at (config `rank_decimals`)."""
    units = {"accuracy": " points", "perplexity": ""}
    said = [f"{metric} exactly" if places is None else f"{metric} to {10.0 ** -places:.{places}f}{units[metric]}"
            for metric, places in board.rank_decimals.items()]
    return (f"Both compare the scores as printed ({', '.join(said)}; `rank_decimals` in the bench config sets this): "
            "scores equal at that precision are a tie, worth 1/2 to each. ") if said else ""


def _kemeny_note(board: Board) -> str:
    """Say when the Kemeny column is one of several optimal orders, or an approximation."""
    kemeny = board.rankings.get("kemeny", {})
    count = kemeny.get("optimal_orders")
    if kemeny.get("exact") is False:
        return ("The Kemeny positions are approximate (a local search; there are more methods than the exact "
                "solver takes), so other orders may be as good or better. ")
    if not count or count == 1:
        return ""
    return (f"The Kemeny order is not unique: {count} orders are equally optimal (total disagreement "
            f"{kemeny['disagreement']:g}); a position such as 2–4 is the range a method takes across them, and "
            "the order the Kemeny rule reports is the one first in Borda order. ")


def _lr_table(board: Board, names: list[str]) -> list[str]:
    lines = ["## Learning rates chosen on dev (seed 0)", "",
             "The chosen rate (bold) among the rates seed 0 trained at; an arrow marks a choice at an edge.", "",
             "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in board.rows:
        lines.append(f"| `{r['method']}` | " + " | ".join(_lr_cell(r["tasks"][t]) if t in r["tasks"] else "–"
                                                         for t in board.tasks) + " |")
    return lines + [""]


def _peft_table(board: Board) -> list[str]:
    # classification rows: accuracy (%); language-modelling rows: test perplexity ("ppl" columns)
    kinds = {"ppl" if "ppl" in p else "acc" for p in board.peft}
    what = "acc" if kinds == {"acc"} else "ppl" if kinds == {"ppl"} else "score"
    lines = ["## Side by side with Hugging Face PEFT", "",
             "Same adapter config (targets resolved to the same modules, r, alpha, dropout, task head as "
             "`modules_to_save`), same initial weights, data, seeds, learning rate, optimiser, schedule and "
             "trainer (petkit's); only the adapter library differs. Ratios are petkit / PEFT: below 1 means "
             "petkit is smaller or faster.", "",
             f"| method | task | seeds | petkit {what} | PEFT {what} | {what} ratio | step time | train memory "
             "| adapter size | inference unmerged | inference merged |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    if what != "acc":
        lines[-2:-2] = ["Perplexity (ppl) is test perplexity on a language-modelling task: lower is better, so a ppl "
                        "ratio below 1 means petkit's adapter scored better.", ""]
    for p in board.peft:
        key = "ppl" if "ppl" in p else "acc"
        score = _ppl if key == "ppl" else _acc
        unit = " ppl" if what == "score" and key == "ppl" else ""
        lines.append(f"| `{p['method']}` | {task_name(p['task'])} | {p['seeds']} | {score(p[f'petkit_{key}'])}{unit} | "
                     f"{score(p[f'peft_{key}'])}{unit} | {_x(p[key])} | {_x(p['step'])} | {_x(p['train_mb'])} | "
                     f"{_x(p['adapter_bytes'])} | {_x(p['unmerged'])} | {_x(p['merged'])} |")
    flagged = [(p, key, what) for p in board.peft
               for key, what in (("step", "step time"), ("train_mb", "memory"), ("adapter_bytes", "size"),
                                 ("unmerged", "unmerged inference"), ("merged", "merged inference"))
               if not _missing(p[key]) and p[key] > 1.05]
    worse = [f"{p['method']}/{task_name(p['task'])} {what} {p[key]:.2f}×{_within(p, key)}" for p, key, what in flagged]
    lines += ["", f"Where petkit is slower or larger than PEFT (ratio > 1.05): {'; '.join(worse) or 'nowhere'}.", ""]
    if any(_within(p, key) for p, key, _ in flagged):
        lines += ["Seed spread: the larger of the two libraries' max / min over seeds of that measurement on "
                  "that method and task, i.e. how far apart runs of the same code land on this machine; a ratio "
                  "inside it is not a measured difference.", ""]
    return lines


def _within(p: dict, key: str) -> str:
    spread = p.get(f"{key}_spread")
    return "" if spread is None or _missing(spread) else f" (seed spread {spread:.2f}×)"


def _protocol(config: BenchConfig, records: list[dict], lm: bool = False) -> list[str]:
    ok = [r for r in records if r.get("status") == "ok"]
    loads = [x for r in ok for x in r.get("load_avg", [])]
    threads = sorted({r["threads"] for r in ok if "threads" in r})
    memory = sorted({r["memory_method"] for r in ok if "memory_method" in r})
    return ["## Protocol", "",
            "- **Learning rate**: seed 0 trains at every rate of the method's grid (the bench defaults in its "
            "registry record, else the generic grid of `petkit/bench/defaults.py`); "
            "the best dev accuracy wins (ties: lower dev loss, then the smaller rate). While the winner is the "
            "smallest or largest rate tried, seed 0 also trains one rate further out (the grid's spacing at that "
            f"edge), at most {config.extend} per side, and the best is chosen again. Seeds 1..n-1 train at the "
            "chosen rate only. Test accuracy is never used to choose."
            + (" On a language-modelling task the lowest dev loss (so dev perplexity) wins (ties: the smaller "
               "rate), and the score is test perplexity, lower is better (the ranking takes its direction "
               "into account)." if lm else ""),
            f"- **Training**: petkit's trainer, AdamW, {config.steps} steps, batch {config.batch_size}, linear "
            f"warm-up {config.warmup:g} then {config.schedule} decay, gradient clipping at 1.0; the task head is "
            "trained with every method.",
            "- **Trainable parameters**: parameters with requires_grad during training (adapter + head). "
            "**Adapter size**: the saved `adapter_model.safetensors`.",
            "- **Training memory**: the peak resident set during training minus the resident set just before "
            "it (imports, data, the model with its adapter and one forward pass done, so lazily loaded weights "
            "are resident), i.e. what training adds: optimizer state, gradients, activations; "
            "each run in a fresh process so no earlier run's freed memory hides growth (torch keeps no peak "
            f"counter for CPU memory, hence RSS). These runs: {'; '.join(memory) or 'n/a'}"
            + (" (in-process numbers can read low)." if any("in-process" in m for m in memory) else "."),
            f"- **Step time**: median wall time of the optimizer steps after the first {WARMUP_STEPS} "
            "(data collation included, evaluation excluded).",
            f"- **Inference**: no-grad forwards over {config.infer_batch} test examples; {config.infer_reps} rounds "
            "after a warm-up, each timing the frozen base model (a fresh copy without wrappers) and the adapted "
            "model in alternating order; the ratio is the median over rounds of adapted / base within a round. "
            "Merged: the same after merging the adapter into the weights.",
            f"- **Machine**: {recorded(ok, 'machine')}; torch threads {', '.join(map(str, threads)) or 'n/a'}"
            f"{_jobs(ok)}; 1-minute load "
            f"average during runs {min(loads, default=math.nan):.1f}–{max(loads, default=math.nan):.1f} "
            "(timings are noisier when it exceeds the thread count).",
            f"- **Versions**: {recorded(ok, 'versions')}.", ""]


def _jobs(ok: list[dict]) -> str:
    jobs = sorted({r.get("jobs", 1) for r in ok})
    return "" if jobs in ([], [1]) else f", runs at once (bench --jobs) {', '.join(map(str, jobs))}"


def _failures(records: list[dict]) -> list[str]:
    done = {key_of(r) for r in records if r.get("status") == "ok"}
    failed = {key_of(r): r for r in records if r.get("status") == "failed" and key_of(r) not in done}
    if not failed:
        return []
    lines = ["## Failed runs (tried again on the next run of the same command)", ""]
    for r in failed.values():
        lines.append(f"- {r['library']} `{r['method']}` on {task_name(r['task'])}, seed {r['seed']}, "
                     f"lr {r['lr']:g}: {r['error']}")
    return lines + [""]

