#!/usr/bin/env python
"""Regression heads on MiniLM: LoRA vs full fine-tuning vs a frozen-encoder linear probe vs the train mean.

Data: the VADER sentiment lexicon (``petkit.data.load_dataset("vader")``, shipped in the vaderSentiment
wheel): 7,517 words, emoticons and slang, each rated by 10 people from -4 to +4. Two real targets per
item: the raters' mean valence and the standard deviation of their ratings (how much they disagreed).
Seeded 80/10/10 split (6,016 / 752 / 752), the same for every run.

Every model is all-MiniLM-L6-v2 with a linear head on the mean of its token states (the pooling the
sentence-transformers checkpoint was trained with), MSE on targets standardised by the train split's
mean/std; predictions and metrics are in the original units (MSE and R² averaged over the two outputs).
- mean: predict the train split's mean (R² ≈ 0 by construction);
- probe: the head alone on the frozen encoder (petkit method ``probe``);
- lora: r = 8, α = 16 on query and value, plus the head;
- full: every weight of the encoder and the head.
Each method's learning rate is chosen on the dev R² of seed 0 from a 3-value grid (never on test);
seeds 0, 1, 2 then run at that rate (the seed changes the head's initialisation, LoRA's A and the data
order). 2 epochs of batch 32 (376 steps), max 16 tokens.

    .venv/bin/python benchmarks/regression_minilm.py                  # ~45 min on a loaded 2-core machine; resumable
    .venv/bin/python benchmarks/regression_minilm.py --smoke --out /tmp/reg   # 2 minutes, tiny subsets

Writes benchmarks/results/regression/: runs/<method>-lr<lr>-seed<k>.json, summary.json, regression.md,
r2.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from petkit.data import load_dataset  # noqa: E402
from petkit.pipeline import RunSpec, run  # noqa: E402
from petkit.train.regression_metrics import regression_metrics  # noqa: E402

METHODS = {
    "probe": ({"name": "probe"}, (3e-3, 1e-2, 3e-2)),
    "lora": ({"name": "lora", "r": 8, "alpha": 16, "targets": ["query", "value"]}, (1e-3, 3e-3, 1e-2)),
    "full": ({"name": "full"}, (3e-5, 1e-4, 3e-4)),
}
METRICS = ("mse", "mae", "r2", "pearson", "spearman")


def one_run(method: str, lr: float, seed: int, args) -> dict | None:
    """One training run (read back when its json exists; None when the time budget is spent)."""
    path = args.out / "runs" / f"{method}-lr{lr:g}-seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if args.budget is not None and time.time() > args.deadline:
        return None
    spec = RunSpec(model="minilm", data="vader", method=dict(METHODS[method][0]), max_length=16, seed=seed,
                   max_train=args.max_train, max_eval=args.max_eval, regression={"pooling": "mean"},
                   train={"lr": lr, "epochs": args.epochs, "batch_size": 32})
    start = time.perf_counter()
    report = run(spec, progress=False, log=lambda *a, **k: None)
    test, per_output = _test_metrics(report["_adapted"], report["_prepared"])
    result = {"method": method, "lr": lr, "seed": seed, "dev": report["dev"], "test": test,
              "test_per_output": per_output, "trainable_parameters": report["trainable_parameters"],
              "steps": report["steps"], "seconds": round(time.perf_counter() - start, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{method:6} lr={lr:g} seed={seed}: dev r2 {result['dev']['r2']:.3f}  test r2 {result['test']['r2']:.3f} "
          f"mse {result['test']['mse']:.3f}  ({result['seconds']} s)", flush=True)
    return result


def _test_metrics(model, prep) -> tuple[dict, dict]:
    """Test metrics averaged over the outputs, and per output."""
    import torch
    preds, targets = [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(prep.test), 64):
            batch = prep.test.collate([prep.test[j] for j in range(i, min(i + 64, len(prep.test)))])
            preds += model(**batch).logits.tolist()
            targets += batch["labels"].tolist()
    m = regression_metrics(preds, targets, prep.labels)
    return {k: m[k] for k in METRICS}, {name: {k: m[f"{k}_{name}"] for k in METRICS} for name in prep.labels}


def mean_baseline(args) -> dict:
    data = load_dataset("vader", max_train=args.max_train, max_eval=args.max_eval)
    mean = [statistics.fmean(r["target"][j] for r in data.train) for j in range(2)]
    targets = [r["target"] for r in data.test]
    m = regression_metrics([mean] * len(targets), targets, data.labels)
    return {"test": {k: m[k] for k in METRICS},
            "test_per_output": {n: {k: m[f"{k}_{n}"] for k in METRICS} for n in data.labels}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "regression")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny subsets, 1 epoch: checks the script runs")
    parser.add_argument("--budget", type=float, help="minutes: start no new run after this (rows then say how many "
                                                     "seeds they have)")
    args = parser.parse_args()
    args.deadline = time.time() + 60 * (args.budget or 0)
    args.max_train, args.max_eval = (200, 100) if args.smoke else (None, None)
    if args.smoke:
        args.epochs = 1
    summary = {"mean": mean_baseline(args)}
    for method, (_, grid) in METHODS.items():
        tried = {lr: one_run(method, lr, args.seeds[0], args) for lr in grid}
        best = max(grid, key=lambda lr: tried[lr]["dev"]["r2"])
        runs = [tried[best]] + [r for r in (one_run(method, best, s, args) for s in args.seeds[1:]) if r]
        summary[method] = {
            "lr": best, "grid": list(grid), "edge": best in (grid[0], grid[-1]),
            "dev_r2_by_lr": {f"{lr:g}": tried[lr]["dev"]["r2"] for lr in grid},
            "trainable_parameters": runs[0]["trainable_parameters"],
            "seconds": statistics.fmean(r["seconds"] for r in runs),
            "test": {k: _mean_sd([r["test"][k] for r in runs]) for k in METRICS},
            "test_per_output": {n: {k: _mean_sd([r["test_per_output"][n][k] for r in runs]) for k in ("mse", "r2")}
                                for n in runs[0]["test_per_output"]},
            "seeds": [r["seed"] for r in runs],
        }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "regression.md").write_text(render(summary))
    plot(summary, args.out / "r2.png")
    print(render(summary))


def _mean_sd(values: list[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def render(summary: dict) -> str:
    def cell(v) -> str:
        return f"{v[0]:.3f} ± {v[1]:.3f}" if isinstance(v, list) else f"{v:.3f}"

    lines = ["# Regression heads on MiniLM: VADER lexicon (valence, rater std)", "",
             "Test split (752 items), original units; mean ± sd over the seeds listed. MSE, R² and Spearman are "
             "averaged over the two outputs.", "",
             "| method | trainable params | lr (dev-chosen) | seeds | test MSE | test R² | R² valence | R² rater std "
             "| Spearman | s / run |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    base = summary["mean"]
    lines.append(f"| train mean | 0 | – | – | {cell(base['test']['mse'])} | {cell(base['test']['r2'])} | "
                 f"{cell(base['test_per_output']['valence']['r2'])} | {cell(base['test_per_output']['rater_std']['r2'])} "
                 f"| – | – |")
    for method in METHODS:
        s = summary[method]
        edge = " (edge)" if s["edge"] else ""
        seeds = ", ".join(map(str, s["seeds"]))
        lines.append(f"| {method} | {s['trainable_parameters']:,} | {s['lr']:g}{edge} | {seeds} | {cell(s['test']['mse'])} | "
                     f"{cell(s['test']['r2'])} | {cell(s['test_per_output']['valence']['r2'])} | "
                     f"{cell(s['test_per_output']['rater_std']['r2'])} | {cell(s['test']['spearman'])} | "
                     f"{s['seconds']:.0f} |")
    lines += ["", "Dev R² of seed 0 over each learning-rate grid (the chosen rate is the best):", ""]
    for method in METHODS:
        grid = ", ".join(f"{lr}: {r2:.3f}" for lr, r2 in summary[method]["dev_r2_by_lr"].items())
        lines.append(f"- {method}: {grid}")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = ["train mean", *METHODS]
    r2 = [summary["mean"]["test"]["r2"], *(summary[m]["test"]["r2"][0] for m in METHODS)]
    sd = [0.0, *(summary[m]["test"]["r2"][1] for m in METHODS)]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, r2, yerr=sd, color=["#bbb", "#8ab", "#e84", "#58c"], capsize=4)
    ax.set_ylabel("test R² (mean of 2 outputs)")
    ax.set_title("MiniLM regression heads on VADER")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
