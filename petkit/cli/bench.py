"""`petkit bench`: flags and YAML into a BenchConfig, run it, print where the leaderboard is.

    petkit bench                                      # the quick default preset (MiniLM, BBC, 6 methods)
    petkit bench --model minilm --tasks sst2,trec,bbc --methods lora,dora,ia3,bitfit,full,probe \\
                 --seeds 3 --budget steps=300 --against peft --output benchmarks/results/minilm
    petkit bench --full                               # every registered method on every local task
    petkit bench --config bench.yaml                  # the same keys as BenchConfig, plus budget/preset

Flags override the YAML file, which overrides the preset.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from petkit.cli.commands import read_settings
from petkit.core.errors import ConfigError

console = Console()
FLAGS = ("model", "tasks", "methods", "seeds", "budget", "batch_size", "max_length", "max_train", "max_eval",
         "against", "order_by", "output", "threads", "jobs", "baseline", "extend")


DESCRIPTION = (
    "Train every method on every task for every seed, measured the same way; write results.jsonl, "
    "leaderboard.md and plots to --output. Re-running the same command skips finished runs (resume). "
    "Default preset (no flags): MiniLM on BBC News; lora, ia3, bitfit, full, probe; 2 seeds; 40 steps of "
    "8 examples at 64 tokens; 320 train / 100 dev / 100 test examples; about 5 minutes on 2 cores. "
    "--full: every registered method on every local classification dataset, 3 seeds, 300 steps of 16 "
    "examples at 128 tokens, 2000 train / 500 dev / 500 test examples.")


def add_arguments(p) -> None:
    p.description = DESCRIPTION
    p.add_argument("--config", help="YAML file of bench settings (flags override it)")
    p.add_argument("--model", help="alias (minilm, smollm2) or a local Hugging Face folder")
    p.add_argument("--tasks", help="comma-separated dataset names or files, e.g. sst2,trec,bbc; or local")
    p.add_argument("--methods", help="comma-separated method names, or 'all' (see `petkit methods`)")
    p.add_argument("--seeds", type=int, help="seeds per (method, task); the learning rate is searched on seed 0")
    p.add_argument("--extend", type=int, help="while the best rate on dev is the grid's smallest or largest, "
                                              "try up to this many more past that edge (default 2; 0: the grid as is)")
    p.add_argument("--budget", help="optimizer steps per run, e.g. steps=300")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--max-train", type=int)
    p.add_argument("--max-eval", type=int, help="cap on each of dev and test")
    p.add_argument("--against", choices=["peft"], help="also run the shared methods through Hugging Face PEFT")
    p.add_argument("--order-by", choices=["borda", "kemeny", "mean"], help="aggregation that orders the leaderboard")
    p.add_argument("--full", action="store_true",
                   help="preset: every registered method on every local task, 3 seeds, 300 steps")
    p.add_argument("--output", help="folder for results.jsonl, leaderboard.md and plots (default runs/bench)")
    p.add_argument("--threads", type=int, help="torch threads per run (default 1: steadier timings on shared cores)")
    p.add_argument("--jobs", type=int, help="runs at once, each in its own process (default 1; step times are "
                                            "comparable only among runs made with the same --jobs)")
    p.add_argument("--baseline", help="method that memory and step time are divided by (default full, when benched)")
    p.add_argument("--in-process", action="store_true", help="run in this process (faster; peak memory less reliable)")
    p.add_argument("--fresh", action="store_true", help="delete the results in --output and start over")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite the leaderboard and plots from results.jsonl")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args):
    from petkit.bench import BenchConfig
    data = read_settings(args.config, "bench") if args.config else {}
    if args.full:
        data["preset"] = "full"
    for key in FLAGS:
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.in_process:
        data["isolate"] = False
    return BenchConfig.from_dict(data)


def run(args) -> int:
    from petkit.bench import RESULTS_NAME, Results, run_bench
    from petkit.bench.report import write_report

    config = config_from_args(args)
    out = Path(config.output)
    started = time.perf_counter()
    if args.report_only:
        if not (out / RESULTS_NAME).is_file():
            raise ConfigError(f"no {RESULTS_NAME} in {out} to report on; run the bench first")
        board = write_report(out, config, Results(out / RESULTS_NAME, config, lock=False).records)
    else:
        try:
            board = run_bench(config, fresh=args.fresh, progress=not args.no_progress, log=console.print)
        except KeyboardInterrupt:
            console.print(f"interrupted: finished runs are saved in {out / RESULTS_NAME}; "
                          "run the same command again to resume")
            return 130
    _print_board(board)
    console.print(f"leaderboard: {out / 'leaderboard.md'}  ({_minutes(time.perf_counter() - started)})")
    return 0


def _print_board(board) -> None:
    if not board.rows:
        console.print("no finished runs")
        return
    import math

    table = Table(title=board.statement, title_justify="left")
    # classification tasks: mean test accuracy; language-modelling tasks: mean test perplexity (lower is better)
    scores = [(key, head) for key, head in (("mean_acc", "mean test acc"), ("mean_ppl", "mean test ppl"))
              if any(key in r and not math.isnan(r[key]) for r in board.rows)]
    for col in ("#", "method", *(head for _, head in scores), "trainable params", "step ms", "unmerged × base"):
        table.add_column(col, justify="right" if col != "method" else "left")

    def score(key, value):
        if value is None or math.isnan(value):
            return "–"
        return f"{100 * value:.1f}" if key == "mean_acc" else f"{value:.2f}"

    for k, r in enumerate(board.rows, start=1):
        table.add_row(str(k), r["method"], *(score(key, r.get(key)) for key, _ in scores), f"{r['params']:,.0f}",
                      f"{r['step_ms']:.0f}", f"{r['unmerged_vs_base']:.2f}")
    console.print(table)


def _minutes(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes}m{s:02d}s"
