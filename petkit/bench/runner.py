"""`run_bench`: the whole bench, top to bottom.

    config = BenchConfig(tasks=("bbc", "trec"), methods=("lora", "full"), seeds=3, steps=300)
    run_bench(config)   # runs what <output>/results.jsonl lacks, then writes the leaderboard and plots

For each task, for each method:
  1. seed 0 at every learning rate of the method's grid, and past an edge of it while the best rate on
     dev sits there (the search; summary.py has the rule);
  2. seeds 1..n-1 at the rate chosen on dev;
  3. with against="peft" and a method both libraries have, every seed through Hugging Face PEFT at
     that same rate.
Each run is one job (measure.py), in a fresh process unless config.isolate is False, and becomes one
record appended to results.jsonl the moment it ends; a run that fails is recorded as failed (and
tried again next time) instead of stopping the grid. With config.jobs > 1, that many (task, method)
chains run at once, each still in the order above.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from petkit.bench.child import run_isolated
from petkit.bench.config import BenchConfig
from petkit.bench.leaderboard import Board
from petkit.bench.progress import GridProgress
from petkit.bench.report import write_report
from petkit.bench.results import RESULTS_NAME, Results, key_of
from petkit.bench.summary import lr_search, task_name
from petkit.core.errors import ConfigError
from petkit.interop.peft import exportable
from petkit.version import __version__


def run_bench(config: BenchConfig, *, fresh: bool = False, progress: bool = True, log: Callable | None = None,
              on_record: Callable[[dict], None] | None = None) -> Board:
    """Run the grid of `config`, resuming from its results file; write the report and return its numbers.

    fresh: delete earlier results first. log: where one line per run goes when the progress view is
    off. on_record: called with every record after it is saved (raising there stops the bench).
    """
    out = Path(config.output)
    _check_tasks(config)
    execute = run_isolated if config.isolate else _in_process
    twins = set(exportable()) if config.against == "peft" else set()

    with Results(out / RESULTS_NAME, config, fresh=fresh) as results, \
            GridProgress(_count(config, twins), progress, log, jobs=config.jobs) as bar:
        shared = threading.Lock()  # results file, progress view and on_record are touched by every chain
        stop = threading.Event()   # set when one chain fails or the bench is interrupted: start no more runs

        def run(library: str, method: str, task: str, seed: int, lr: float, phase: str) -> None:
            job = {"library": library, "method": method, "task": task, "seed": seed, "lr": lr,
                   "settings": config.method_settings(method), "setup": config.setup()}
            if method in config.variants:
                job["registered"] = config.registered(method)
            with shared:
                if stop.is_set():
                    return
                if results.done(key_of(job)):
                    bar.skip()
                    return
                handle = bar.start(f"{library} {method} · {task_name(task)} · seed {seed} · lr {lr:g}")
            try:
                measured = {"status": "ok", **execute(job)}
            except Exception as exc:  # noqa: BLE001 - one broken method must not stop the grid
                measured = {"status": "failed", "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            record = {k: v for k, v in job.items() if k != "setup"}
            record.update(phase=phase, **measured, jobs=config.jobs, petkit_version=__version__,
                          finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            with shared:
                results.append(record)
                bar.finish(handle, _describe(record))
                if on_record:
                    on_record(record)

        def chain(task: str, method: str) -> None:
            grid = config.lr_grid(method)
            for lr in grid:
                run("petkit", method, task, 0, lr, "search" if len(grid) > 1 else "seed")
            while True:  # past the grid's edge while the best rate on dev sits there
                with shared:
                    search = lr_search(results.records, method, task, grid, config.extend)
                    if search.pending is not None and not stop.is_set():
                        bar.grow()
                if search.pending is None or stop.is_set():
                    break
                run("petkit", method, task, 0, search.pending, "extend")
                with shared:
                    if not results.done(("petkit", method, task, 0, search.pending)):
                        bar.log(f"{method} on {task_name(task)}: lr {search.pending:g} failed; the search "
                                "stops at the rates that trained (the edge stays marked)")
                        break
            lr = search.chosen
            if lr is None:
                with shared:
                    bar.skip(config.seeds - 1 + (config.seeds if method in twins else 0))
                    bar.log(f"{method} on {task_name(task)}: no learning rate of {list(grid)} trained; "
                            "its other seeds are skipped")
                return
            for seed in range(1, config.seeds):
                run("petkit", method, task, seed, lr, "seed")
            if method in twins:
                for seed in range(config.seeds):
                    run("peft", method, task, seed, lr, "seed")

        chains = [(task, method) for task in config.tasks for method in config.methods]
        if config.jobs == 1:
            for task, method in chains:
                chain(task, method)
        else:
            pool = ThreadPoolExecutor(config.jobs)
            try:
                for future in [pool.submit(chain, task, method) for task, method in chains]:
                    future.result()  # re-raises what stopped a chain (e.g. on_record asking to stop)
            except BaseException:
                stop.set()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    return write_report(out, config, results.records)


def _in_process(job: dict) -> dict:
    import torch

    from petkit.bench.measure import measure_run
    threads = torch.get_num_threads()
    try:
        return measure_run(job)
    finally:
        torch.set_num_threads(threads)  # a run's thread setting must not outlive it


def _check_tasks(config: BenchConfig) -> None:
    """Load each task once up front: a missing dataset or one the bench cannot score fails now, not per run."""
    from petkit.data import load_dataset
    for task in config.tasks:
        data = load_dataset(task)
        if data.task not in ("classification", "causal_lm"):
            raise ConfigError(f"the bench scores classification tasks by accuracy and causal-LM tasks by "
                              f"perplexity; {task} is a {data.task} dataset")


def _count(config: BenchConfig, twins: set) -> int:
    per_task = sum(len(config.lr_grid(m)) + config.seeds - 1 + (config.seeds if m in twins else 0)
                   for m in config.methods)
    return per_task * len(config.tasks)


def _describe(r: dict) -> str:
    what = f"{r['library']} {r['method']} · {task_name(r['task'])} · seed {r['seed']} · lr {r['lr']:g}"
    if r["status"] != "ok":
        return f"{what}: FAILED {r['error']}"
    memory = f", +{r['train_mb']:.0f} MB" if r.get("train_mb") is not None else ""
    metric = "accuracy" if "accuracy" in r["test"] else "perplexity"
    scores = (f"dev {r['dev']['accuracy']:.3f}, test {r['test']['accuracy']:.3f}" if metric == "accuracy" else
              f"dev loss {r['dev']['loss']:.3f}, test perplexity {r['test']['perplexity']:.2f}")
    return f"{what}: {scores}, {1000 * r['step_s']:.0f} ms/step{memory}"
