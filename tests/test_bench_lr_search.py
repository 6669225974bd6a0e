"""The learning-rate search goes past a grid edge while the best rate on dev sits there, and the report
marks the cells where it still does. Runs are faked (dev accuracy a known function of the rate), so the
expected rates can be written down."""

from __future__ import annotations

import math

import pytest

import petkit.bench.runner as runner
from petkit.bench import BenchConfig, run_bench
from petkit.bench.summary import lr_search


def dev_accuracy(lr: float, peak: float) -> float:
    """A single-peaked curve in log(lr): best at `peak`."""
    return 0.9 - 0.1 * abs(math.log10(lr) - math.log10(peak))


def seed0(lrs, peak, method="m", task="t"):
    return [{"status": "ok", "library": "petkit", "method": method, "task": task, "seed": 0, "lr": lr,
             "dev": {"accuracy": dev_accuracy(lr, peak), "loss": 1.0}, "test": {"accuracy": 0.5}} for lr in lrs]


def test_an_interior_choice_needs_no_more_rates():
    search = lr_search(seed0([1e-3, 3e-3, 1e-2], peak=3e-3), "m", "t", (1e-3, 3e-3, 1e-2), extend=2)
    assert (search.chosen, search.pending, search.edge) == (3e-3, None, None)


def test_an_upper_edge_asks_for_one_rate_past_it_at_the_grid_spacing():
    grid = (1e-3, 5e-3)
    search = lr_search(seed0(grid, peak=2e-2), "m", "t", grid, extend=2)
    assert (search.chosen, search.edge, search.pending) == (5e-3, "upper", 2.5e-2)
    # 2.5e-2 wins too; the next one out (1.25e-1) loses: an interior choice among four rates
    search = lr_search(seed0([*grid, 2.5e-2, 1.25e-1], peak=2e-2), "m", "t", grid, extend=2)
    assert (search.chosen, search.edge, search.pending) == (2.5e-2, None, None)
    assert search.rates == (1e-3, 5e-3, 2.5e-2, 1.25e-1)


def test_a_lower_edge_goes_down():
    grid = (1e-3, 5e-3)
    assert lr_search(seed0(grid, peak=1e-4), "m", "t", grid, extend=2).pending == pytest.approx(2e-4)
    search = lr_search(seed0([*grid, 2e-4, 4e-5], peak=1e-4), "m", "t", grid, extend=2)
    assert (search.chosen, search.edge) == (2e-4, None)


def test_the_search_stops_at_its_cap_or_at_rate_one_and_says_edge():
    grid = (1e-3, 5e-3)
    search = lr_search(seed0([*grid, 2.5e-2, 1.25e-1], peak=0.1), "m", "t", grid, extend=2)
    assert (search.chosen, search.edge, search.pending) == (1.25e-1, "upper", None)
    assert lr_search(seed0(grid, peak=1e-1), "m", "t", grid, extend=0).edge == "upper"
    search = lr_search(seed0((0.3, 0.6), peak=0.9), "m", "t", (0.3, 0.6), extend=2)
    assert (search.chosen, search.edge, search.pending) == (0.6, "upper", None)  # 1.2 is no learning rate


def test_runs_at_rates_outside_the_search_are_ignored():
    # a seed-0 run at a rate the search never reached (an older grid) must not be chosen
    records = seed0([1e-3, 3e-3, 1e-2], peak=3e-3) + seed0([5e-2], peak=5e-2)
    search = lr_search(records, "m", "t", (1e-3, 3e-3, 1e-2), extend=2)
    assert search.chosen == 3e-3 and 5e-2 not in search.rates


def test_a_single_rate_is_a_fixed_choice_not_an_edge():
    search = lr_search(seed0([1e-3], peak=1.0), "m", "t", (1e-3,), extend=2)
    assert (search.chosen, search.edge, search.pending) == (1e-3, None, None)


# -- the runner and the report, with runs faked -------------------------------------------------------

PEAKS = {"lora": 2e-2, "bitfit": 3e-3, "probe": 1.0}  # probe: always wants a larger rate


def fake_run(job: dict) -> dict:
    acc = dev_accuracy(job["lr"], PEAKS[job["method"]]) - 0.001 * job["seed"]
    return {"dev": {"accuracy": acc, "loss": 1 - acc}, "test": {"accuracy": acc, "loss": 1 - acc},
            "trainable_params": 10, "base_params": 1000, "adapter_bytes": 40, "train_mb": 1.0, "peak_rss_mb": 2.0,
            "memory_method": "faked", "step_s": 0.01, "threads": 1, "load_avg": [0.0, 0.0],
            "inference": {"unmerged_ratio": 1.0, "merged_ratio": 1.0}}


@pytest.fixture
def task(tmp_path):
    path = tmp_path / "toy.csv"
    path.write_text("text,label\n" + "".join(f"w{i},{'ab'[i % 2]}\n" for i in range(40)))
    return str(path)


def test_the_bench_extends_edges_reruns_seeds_and_marks_what_stays_at_an_edge(monkeypatch, task, tmp_path):
    monkeypatch.setattr(runner, "_in_process", fake_run)
    config = BenchConfig(model="tiny", tasks=(task,), methods=("lora", "bitfit", "probe"), seeds=2, isolate=False,
                         lrs={"lora": [1e-3, 5e-3], "bitfit": [1e-3, 3e-3, 1e-2], "probe": [1e-2, 3e-2]},
                         extend=2, output=str(tmp_path / "out"))
    board = run_bench(config, progress=False)
    cells = {r["method"]: r["tasks"][task] for r in board.rows}
    assert (cells["lora"]["lr"], cells["lora"]["lr_edge"]) == (2.5e-2, None)
    assert cells["lora"]["lr_searched"] == [1e-3, 5e-3, 2.5e-2, 1.25e-1]
    assert (cells["bitfit"]["lr"], cells["bitfit"]["lr_edge"]) == (3e-3, None)
    assert cells["bitfit"]["lr_searched"] == [1e-3, 3e-3, 1e-2]          # interior at once: nothing added
    assert (cells["probe"]["lr"], cells["probe"]["lr_edge"]) == (0.27, "upper")  # 3e-2, 9e-2, 0.27: cap
    assert cells["lora"]["seeds"] == 2  # seed 1 ran at the rate found past the edge

    markdown = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "interior optimum of its searched rates in 2 of 3 cells" in markdown
    probe_row = next(line for line in markdown.splitlines() if line.startswith("| ") and "`probe`" in line)
    lora_row = next(line for line in markdown.splitlines() if line.startswith("| ") and "`lora`" in line)
    assert " †" in probe_row and " †" not in lora_row
    assert "**0.27** ↑ (upper edge) of 0.01, 0.03, 0.09, 0.27" in markdown
    assert "**0.025** of 0.001, 0.005, 0.025, 0.125" in markdown

    # re-running finds everything done (the search replays from the records)
    def no_new_runs(record):
        raise AssertionError(f"re-ran {record['method']} at {record['lr']}")
    run_bench(config, progress=False, on_record=no_new_runs)
