#!/usr/bin/env python
"""Deep Model Assembling against end-to-end training, on a small text classifier trained from scratch:
AG News (its local 7,600-row test split re-split 80/10/10 into train/dev/test), a BERT of 8 blocks,
width 64, 4 heads, FFN 256, random init, MiniLM's WordPiece tokenizer (vocabulary only), max length 64.
(Width 64, not 128: the machine this ran on was shared by a dozen jobs on 2 cores, and width 128 at
this budget would not have finished in time; `SETUP` below sets it.)

    .venv/bin/python benchmarks/assemble_text.py            # 3 seeds, ~15 min of one idle core
    .venv/bin/python benchmarks/assemble_text.py --seeds 1  # one seed (seeds can run as parallel processes;
                                                            # a last plain run then only writes the report)

Per seed, side by side, every run from the same target init:
  assembled  meta model (4 blocks, PT) → incubation of each of the 4 modules (MT, 2 blocks each, one
             after the other here, independent jobs) → assembling + fine-tuning (FT, no warmup, clip 1);
  e2e        the target trained end to end for the assembling run's whole budget (PT + MT + FT, in
             target steps: see petkit/assemble/incubate.py for how a step is weighted by what it runs);
  e2e-ft     the target trained end to end for FT's number of steps alone.
The end models are scored on dev every 20 steps; the test accuracy reported is the one of the dev-best
step (selection on dev only). Wall-clock seconds of training (evaluations excluded) are reported too.

Why AG News: topic labels are carried by words, which a small transformer learns from a few thousand
examples without pre-training (SST-2's sentiment needs composition, and from scratch at this size stays
near the majority class for long; TREC's 5.5k short questions saturate fast and leave little to compare).

Writes to benchmarks/results/assemble-text/: seed<k>/<run>.json (resumable: a finished run is skipped),
assemble.json, assemble.md, curve.png. Weights go to a scratch folder (--work), not to the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from petkit.assemble import AssembleConfig, budget, prepare, run_assemble, run_e2e, run_incubate, run_meta  # noqa: E402

SETUP = {"data": "ag_news", "depth": 8, "num_modules": 4, "width": 64, "heads": 4, "ffn": 256, "max_length": 64,
         "batch_size": 32, "lr": 5e-4, "meta_steps": 200, "incubation_steps": 100, "finetune_steps": 200,
         "eval_every": 20}
RUNS = ("assembled", "e2e", "e2e-ft")


def data_available() -> str | None:
    try:
        from petkit.data.locate import find_dataset_dir
        find_dataset_dir("ag_news", ["test.csv", "classes.txt"])
        from petkit.models.aliases import minilm_dir
        minilm_dir()
    except Exception as exc:  # what is missing, in the loader's own words
        return str(exc)
    return None


def run_seed(seed: int, out: Path, work: Path, setup: dict) -> dict:
    """The three runs of one seed; each run's json is kept, so a rerun skips what is done."""
    cfg = AssembleConfig.from_dict({**setup, "seed": seed, "output": str(work / f"seed{seed}")})
    folder = out / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    done = {name: json.loads((folder / f"{name}.json").read_text()) for name in RUNS if (folder / f"{name}.json").is_file()}
    if len(done) == len(RUNS):
        return done
    data = prepare(cfg)
    if "assembled" not in done:
        phases = [run_meta(cfg, data)] + [run_incubate(cfg, k, data) for k in range(cfg.num_modules)]
        print(f"seed {seed}: meta dev {phases[0]['dev']:.3f}, hybrids dev {[round(p['dev'], 3) for p in phases[1:]]}",
              flush=True)
        record = {**run_assemble(cfg, data), "phases": phases}
        done["assembled"] = _save(folder, "assembled", record)
    if "e2e" not in done:
        done["e2e"] = _save(folder, "e2e", run_e2e(cfg, data=data))
    if "e2e-ft" not in done:
        done["e2e-ft"] = _save(folder, "e2e-ft", run_e2e(cfg, cfg.finetune_steps, "e2e-ft", data=data))
    return done


def _save(folder: Path, name: str, record: dict) -> dict:
    (folder / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{folder.name} {name}: dev {record['dev']:.3f} test {record['test']:.3f} ({record['seconds']:.0f} s)", flush=True)
    return record


def _spread(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarise(results: list[dict], setup: dict) -> dict:
    cost = budget(setup["num_modules"], setup["depth"], setup["meta_steps"], setup["incubation_steps"],
                  setup["finetune_steps"])
    rows = {}
    for name in RUNS:
        records = [r[name] for r in results]
        seconds = [r["seconds"] + sum(p["seconds"] for p in r.get("phases", [])) for r in records]
        row = {"budget": records[0]["steps"] + records[0]["budget_before"], "seconds": seconds,
               "test": [r["test"] for r in records], "dev": [r["dev"] for r in records],
               "final_test": [r["final_test"] for r in records], "best_step": [r["best_step"] for r in records]}
        if name == "assembled":  # the K incubations as parallel jobs: only the slowest counts
            row["seconds_parallel"] = [r["seconds"] + r["phases"][0]["seconds"] + max(p["seconds"] for p in r["phases"][1:])
                                       for r in records]
            row["meta_dev"] = [r["phases"][0]["dev"] for r in records]
            row["hybrid_dev"] = [[p["dev"] for p in r["phases"][1:]] for r in records]
        rows[name] = row
    return {"setup": setup, "budget": cost, "seeds": len(results), "rows": rows}


def table(summary: dict) -> str:
    lines = ["| run | budget (target steps) | train seconds (sum) | dev acc % (best) | test acc % (dev-selected) | "
             "test acc % (last step) |", "|---|---|---|---|---|---|"]
    labels = {"assembled": "assembled (PT + MT + FT)", "e2e": "E2E, equal budget", "e2e-ft": "E2E, FT's steps only"}
    for name, row in summary["rows"].items():
        seconds = f"{statistics.mean(row['seconds']):.0f}"
        if "seconds_parallel" in row:
            seconds += f" ({statistics.mean(row['seconds_parallel']):.0f} with MT in parallel)"
        lines.append(f"| {labels[name]} | {row['budget']:.0f} | {seconds} | {_spread(row['dev'])} | "
                     f"{_spread(row['test'])} | {_spread(row['final_test'])} |")
    return "\n".join(lines)


def per_seed(results: list[dict], seeds: list[int]) -> str:
    """Test accuracy (dev-selected) of every run of every seed: one failed run shows as what it is."""
    lines = ["| seed | " + " | ".join(RUNS) + " | meta dev |", "|---|" + "---|" * (len(RUNS) + 1)]
    for seed, r in zip(seeds, results):
        cells = [f"{100 * r[name]['test']:.1f}" for name in RUNS]
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {100 * r['assembled']['phases'][0]['dev']:.1f} |")
    return "\n".join(lines)


def mean_curve(results: list[dict], name: str) -> tuple[list[float], list[float]]:
    curves = [r[name]["curve"] for r in results]
    steps = [s for s, _ in curves[0]]
    offset = results[0][name]["budget_before"]
    return [offset + s for s in steps], [100 * statistics.mean(c[i][1] for c in curves) for i in range(len(steps))]


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"assembled": ("C0", "assembled (FT; PT + MT spent before)"), "e2e": ("C1", "E2E, equal budget"),
              "e2e-ft": ("C2", "E2E, FT's steps only")}
    for name, (color, label) in styles.items():
        x, y = mean_curve(results, name)
        left.plot(x, y, color=color, label=label, marker=".")
        start = results[0][name]["budget_before"]
        right.plot([v - start for v in x], y, color=color, label=label, marker=".")
    left.axvline(results[0]["assembled"]["budget_before"], color="grey", ls=":", lw=1)
    left.set(xlabel="training budget spent (target steps)", ylabel="dev accuracy %", title="dev accuracy vs budget")
    right.set(xlabel="steps of the end model's own training", ylabel="dev accuracy %", title="convergence in FT")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ft_convergence(results: list[dict], steps=(20, 40, 80, 160)) -> str:
    """Dev accuracy after the first FT steps: assembled against the end-to-end runs at the same step."""
    lines = ["| run | " + " | ".join(f"dev % at step {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name in RUNS:
        cells = []
        for s in steps:
            values = [dict((st, acc) for st, acc in r[name]["curve"]).get(s) for r in results]
            cells.append(_spread(values) if None not in values else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "assemble-text")
    parser.add_argument("--work", type=Path, default=Path("/tmp/petkit-assemble-text"), help="scratch for weights")
    args = parser.parse_args()
    missing = data_available()
    if missing:
        print(f"skipped: {missing}")
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_seed(seed, args.out, args.work, SETUP) for seed in args.seeds]
    summary = summarise(results, SETUP)
    (args.out / "assemble.json").write_text(json.dumps(summary, indent=1) + "\n")
    title = f"AG News, BERT 8×{SETUP['width']} from scratch, mean of {len(results)} seeds"
    plot(results, args.out / "curve.png", title)
    cost = summary["budget"]
    lines = [f"# Deep Model Assembling on AG News ({len(results)} seeds, mean ± std)", "",
             f"Target: BERT, 8 blocks, width {SETUP['width']}, from scratch; K = 4 modules. Budget in target steps: meta "
             f"{cost['meta']:.0f} + incubation {sum(cost['incubation']):.0f} "
             f"({', '.join(f'{c:.0f}' for c in cost['incubation'])}) + fine-tuning {cost['finetune']:.0f} = "
             f"{cost['total']:.0f}.", "", table(summary), "",
             "Meta model dev accuracy: " + _spread(summary["rows"]["assembled"]["meta_dev"]) + " %.", "",
             "Test accuracy % per seed (dev-selected step):", "", per_seed(results, args.seeds), "",
             "## Convergence in fine-tuning", "", ft_convergence(results), "", "![curve](curve.png)", ""]
    (args.out / "assemble.md").write_text("\n".join(lines))
    print(f"report: {args.out / 'assemble.md'}")


if __name__ == "__main__":
    main()
