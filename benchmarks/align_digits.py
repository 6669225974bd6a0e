#!/usr/bin/env python
"""GPT4Image's small-scale check: a small CNN trained from scratch on scikit-learn's 8×8 digits with
CE + λ·L_text, where L_text pulls its projected features toward a frozen MiniLM embedding (384-d,
mean-pooled) of a description written from each training image's measured attributes
(benchmarks/digits_descriptions.py: stroke weight, slant, closed loops, width, where the ink sits; the
class name with probability 0.5).

Rows, side by side on the same subsets and initialisations (paired by seed):
- ce: cross-entropy alone (λ = 0, the baseline); ce-2x: the same with twice the steps;
- clip / byol / supcon: + λ·L_text with that loss (supcon: CLIP with same-class negatives masked);
- clip-shuffled: the descriptions permuted across the training images (control: no per-image signal);
- clip-no-names: descriptions without the class name (p = 0);
- clip-2x, clip-shuffled-2x: clip and its shuffled control at twice the steps, next to ce-2x (ce at
  300 steps turned out under-trained), on a smaller grid (λ ∈ {0.03, 0.1, 0.3}, τ ∈ {0.2, 0.5}).
Splits: 30% test (held out), 20% dev, training subsets of 10% and 20% of the 1,797 images drawn
stratified from the rest, a new draw per seed; 5 seeds. λ ∈ {0.03, 0.1, 0.3, 1} and
τ ∈ {0.1, 0.2, 0.5, 1} are chosen per row on the mean dev accuracy over seeds (never test); the
table says when the choice sits on the edge of the values that row tried. The controls run at their
method's chosen λ, τ (the same method with one thing changed). 470 runs of a ~25k-parameter CNN for
300 steps of batch 32 (the "-2x" rows: 600); each run's wall time is in its json ("seconds"). The
committed run took ~65 minutes of wall time on a 2-core machine shared with other jobs (load ≈ 10);
on a quiet core a run takes ~3–4 s, ~30 minutes in all (OMP_NUM_THREADS=1).
The MiniLM embedding of 2 × 1,797 descriptions takes under a minute.

    .venv/bin/python benchmarks/align_digits.py                # everything (resumable per subset and seed)
    .venv/bin/python benchmarks/align_digits.py --seeds 0 --steps 20 --out /tmp/align   # a smoke run

Writes to benchmarks/results/align-digits/: runs/<subset>-seed<k>.json, summary.json, align.md,
accuracy.png, descriptions.md (sample descriptions).
"""

from __future__ import annotations

import argparse
import itertools
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
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from digits_descriptions import describe  # noqa: E402
from petkit.distill.align_train import AlignConfig, AlignedClassifier, AlignedExamples, embed_texts  # noqa: E402
from petkit.train import TrainConfig, evaluate, train  # noqa: E402

SUBSETS = {"10%": 0.10, "20%": 0.20}
WEIGHTS = (0.03, 0.1, 0.3, 1.0)
TEMPERATURES = (0.1, 0.2, 0.5, 1.0)
ROWS = {  # row -> (loss, descriptions, shuffled)
    "ce": (None, "named", False),
    "ce-2x": (None, "named", False),  # trained twice as many steps: is a gain only faster optimisation?
    "clip": ("clip", "named", False),
    "byol": ("byol", "named", False),
    "supcon": ("supcon", "named", False),
    "clip-shuffled": ("clip", "named", True),
    "clip-no-names": ("clip", "plain", False),
    "clip-2x": ("clip", "named", False),
    "clip-shuffled-2x": ("clip", "named", True),
}
# Controls run at their method's chosen λ, τ: the same method with one thing changed.
CONTROLS = {"clip-shuffled": "clip", "clip-no-names": "clip", "clip-shuffled-2x": "clip-2x"}
GRID_2X = [{"weight": w, "temperature": t} for w in (0.03, 0.1, 0.3) for t in (0.2, 0.5)]  # a smaller grid: 2x cost
TRAIN = {"lr": 3e-3, "batch_size": 32, "weight_decay": 1e-4, "schedule": "cosine", "max_grad_norm": None}


def small_cnn() -> tuple[nn.Module, nn.Module, int]:
    features = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return features, nn.Linear(64, 10), 64


def splits(labels: np.ndarray) -> dict:
    """Fixed test and dev splits (stratified, seed 0); the training pool is what is left."""
    from sklearn.model_selection import train_test_split

    everything = np.arange(len(labels))
    rest, test = train_test_split(everything, test_size=0.3, stratify=labels, random_state=0)
    pool, dev = train_test_split(rest, test_size=round(0.2 * len(labels)), stratify=labels[rest], random_state=0)
    return {"pool": pool, "dev": dev, "test": test}


def training_subset(pool: np.ndarray, labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    subset, _ = train_test_split(pool, train_size=size, stratify=labels[pool], random_state=seed)
    return np.sort(subset)


def grid(loss: str | None) -> list[dict]:
    if loss is None:
        return [{"weight": 0.0, "temperature": 0.2}]
    temperatures = (0.2,) if loss == "byol" else TEMPERATURES  # BYOL has no temperature
    return [{"weight": w, "temperature": t} for w, t in itertools.product(WEIGHTS, temperatures)]


def one_run(x, y, text, idx, loss, hp, seed, steps) -> dict:
    torch.manual_seed(seed)  # same CNN init for every row of a seed
    features, head, width = small_cnn()
    config = AlignConfig(loss=loss or "clip", weight=hp["weight"], temperature=hp["temperature"])
    model = AlignedClassifier(features, head, width, text.shape[1], config)
    started = time.perf_counter()
    train(model, AlignedExamples(x[idx["train"]], y[idx["train"]], text), TrainConfig(max_steps=steps, seed=seed, **TRAIN),
          progress=False)
    scores = {split: evaluate(model, AlignedExamples(x[idx[split]], y[idx[split]]), batch_size=512)["accuracy"]
              for split in ("dev", "test")}
    return {**hp, **scores, "seconds": round(time.perf_counter() - started, 2)}


def run_subset_seed(name, frac, seed, data, steps, out: Path, grids: dict) -> dict:
    """The runs of one training subset and seed: every row in ``grids`` at each of its grid points."""
    path = out / "runs" / f"{name.rstrip('%')}pct-seed{seed}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    x, y, parts = data["x"], data["y"], data["splits"]
    train_idx = training_subset(parts["pool"], data["labels"], round(frac * len(y)), seed)
    idx = {"train": train_idx, "dev": parts["dev"], "test": parts["test"]}
    shuffle = torch.from_numpy(np.random.default_rng(1000 + seed).permutation(len(train_idx)))
    for row, points in grids.items():
        loss, kind, shuffled = ROWS[row]
        for hp in points:
            key = f"{row} w={hp['weight']} t={hp['temperature']}"
            if key in record:
                continue
            text = data["text"][kind][torch.from_numpy(train_idx)]
            run_steps = 2 * steps if row.endswith("-2x") else steps
            record[key] = {"row": row, **one_run(x, y, text[shuffle] if shuffled else text, idx, loss, hp, seed, run_steps)}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1))  # after every run: a kill loses one run at most
    return record


def select(records: list[dict], row: str, only: dict | None = None) -> dict:
    """The grid point with the best mean dev accuracy over seeds (``only``: that point alone); its test
    accuracy over the same seeds."""
    by_hp: dict = {}
    for record in records:
        for run in record.values():
            if run["row"] == row and (only is None or (run["weight"], run["temperature"]) == only):
                by_hp.setdefault((run["weight"], run["temperature"]), []).append(run)
    (weight, temperature), runs = max(by_hp.items(), key=lambda kv: statistics.mean(r["dev"] for r in kv[1]))
    edges = []  # relative to the values this row tried
    if len({w for w, _ in by_hp}) > 1 and weight in (min(w for w, _ in by_hp), max(w for w, _ in by_hp)):
        edges.append("λ")
    if len({t for _, t in by_hp}) > 1 and temperature in (min(t for _, t in by_hp), max(t for _, t in by_hp)):
        edges.append("τ")
    return {"row": row, "weight": weight, "temperature": temperature, "edge": edges,
            "dev": [r["dev"] for r in runs], "test": [r["test"] for r in runs]}


def edge(row: str, chosen: dict) -> str:
    return f"{CONTROLS[row]}'s λ, τ" if row in CONTROLS else ", ".join(chosen["edge"]) or "–"


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def text_probe(data: dict) -> dict:
    """How much class information the descriptions carry: logistic regression from description
    embeddings (training pool) to the class, scored on the test images' descriptions."""
    from sklearn.linear_model import LogisticRegression

    parts, y = data["splits"], data["labels"]
    scores = {}
    for kind, text in data["text"].items():
        probe = LogisticRegression(max_iter=2000).fit(text[parts["pool"]].numpy(), y[parts["pool"]])
        scores[kind] = float(probe.score(text[parts["test"]].numpy(), y[parts["test"]]))
    return scores


def report(summary: dict, probe: dict, out: Path, seeds: list[int], steps: int) -> None:
    lines = ["# GPT4Image-style alignment on scikit-learn digits", "",
             f"Small CNN (~25k parameters) from scratch, {steps} steps of batch 32 (rows ending in -2x: {2 * steps}), "
             f"{len(seeds)} seeds (a new stratified "
             "training draw and initialisation per seed, shared by all rows). Test: 540 held-out images. λ/τ chosen per "
             "row on mean dev accuracy (360 images); *edge* marks a choice on the grid's boundary "
             f"(λ ∈ {list(WEIGHTS)}, τ ∈ {list(TEMPERATURES)}; -2x rows: λ ∈ {sorted({g['weight'] for g in GRID_2X})}, "
             f"τ ∈ {sorted({g['temperature'] for g in GRID_2X})}). Δ: paired difference from `ce` (`ce-2x` for the -2x "
             "rows) on the same seeds (mean ± std over seeds).", "",
             "| train subset | row | λ | τ | edge | dev acc % | test acc % | Δ test vs ce, same steps (pp) | seeds above ce |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in summary.items():
        for row, s in rows.items():
            base = rows["ce-2x" if row.endswith("-2x") else "ce"]["test"]  # the baseline at the same steps
            delta = [a - b for a, b in zip(s["test"], base)]
            tau = "–" if row in ("ce", "ce-2x", "byol") else s["temperature"]
            versus = "– | –" if row in ("ce", "ce-2x") else f"{mean_std(delta)} | {sum(d > 0 for d in delta)}/{len(delta)}"
            lines.append(f"| {name} | {row} | {s['weight'] if ROWS[row][0] else 0} | {tau} | {edge(row, s)} | "
                         f"{mean_std(s['dev'])} | {mean_std(s['test'])} | {versus} |")
    lines += ["", "Linear probe from the description embeddings alone to the class (test images' descriptions): "
              + ", ".join(f"{kind}: {100 * acc:.1f}%" for kind, acc in probe.items())
              + " (named: class name in about half; plain: never).", "", "![accuracy](accuracy.png)", ""]
    (out / "align.md").write_text("\n".join(lines) + "\n")


def plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], summary.items()):
        names = list(rows)
        means = [100 * statistics.mean(rows[r]["test"]) for r in names]
        stds = [100 * statistics.stdev(rows[r]["test"]) if len(rows[r]["test"]) > 1 else 0 for r in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3, color=["grey" if r.startswith("ce") else "C0" for r in names])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylim(min(means) - 4, min(100, max(means) + 3))
        ax.set_title(f"{name} of digits for training")
        ax.set_ylabel("test accuracy % (mean ± std)")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)


def load_data(out: Path) -> dict:
    from sklearn.datasets import load_digits

    from petkit.models import ModelNotFound
    from petkit.models.aliases import minilm_dir

    digits = load_digits()
    try:
        folder = minilm_dir()
    except ModelNotFound as e:
        sys.exit(f"skipped: {e}")
    texts = {"named": describe(digits.images, digits.target, p=0.5), "plain": describe(digits.images, digits.target, p=0.0)}
    sample = "\n".join(f"- ({digits.target[i]}) {texts['named'][i]}" for i in range(0, 40, 4))
    (out / "descriptions.md").write_text("# Sample descriptions (p = 0.5)\n\n" + sample + "\n")
    torch.manual_seed(0)
    return {"x": torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1),
            "y": torch.tensor(digits.target), "labels": digits.target, "splits": splits(digits.target),
            "text": {kind: embed_texts(folder, None, t) for kind, t in texts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "align-digits")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_data(args.out)
    summary = {}
    for name, frac in SUBSETS.items():
        searched = {row: GRID_2X if row == "clip-2x" else grid(ROWS[row][0]) for row in ROWS if row not in CONTROLS}
        records = [run_subset_seed(name, frac, seed, data, args.steps, args.out, searched) for seed in args.seeds]
        chosen = {row: select(records, row) for row in set(CONTROLS.values())}
        controls = {row: [{"weight": chosen[of]["weight"], "temperature": chosen[of]["temperature"]}]
                    for row, of in CONTROLS.items()}
        records = [run_subset_seed(name, frac, seed, data, args.steps, args.out, controls) for seed in args.seeds]
        summary[name] = {row: select(records, row, (controls[row][0]["weight"], controls[row][0]["temperature"])
                                     if row in CONTROLS else None) for row in ROWS}
    probe = text_probe(data)
    (args.out / "summary.json").write_text(json.dumps({"subsets": summary, "text_probe": probe, "steps": args.steps,
                                                       "seeds": args.seeds}, indent=1))
    report(summary, probe, args.out, args.seeds, args.steps)
    plot(summary, args.out)
    print(f"report: {args.out / 'align.md'}")


if __name__ == "__main__":
    main()
