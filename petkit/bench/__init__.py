"""`petkit bench`: every method × task × seed, measured the same way, in one leaderboard.

    from petkit.bench import BenchConfig, run_bench
    run_bench(BenchConfig(tasks=("bbc",), methods=("lora", "ia3", "full"), seeds=3, steps=300))

Read in this order: config.py (what a bench is) → runner.py (the grid, top to bottom) → measure.py
(one run and how each number is measured) → results.py (resume, refusing mixed setups) →
summary.py / leaderboard.py / report.py / plots.py (from records to the leaderboard).
defaults.py reads each method's settings and learning-rate grid from its registry record.
"""

from petkit.bench.config import MIN_STEPS, BenchConfig
from petkit.bench.results import RESULTS_NAME, Results
from petkit.bench.runner import run_bench

__all__ = ["MIN_STEPS", "RESULTS_NAME", "BenchConfig", "Results", "run_bench"]
