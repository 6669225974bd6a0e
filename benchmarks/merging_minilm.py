#!/usr/bin/env python
"""Merging on real runs (issue 6): soups, multi-task merges, DIMAT. MiniLM, data from ../shared/data.

1. Soups: 4 LoRA runs on SST-2 that differ only in learning rate (same seed, so the same head init and
   data order), each scored on dev (held-out) and test; the uniform soup and the greedy soup (dev),
   both in ΔW space with the heads averaged.
2. Multi-task: the best SST-2 run, one LoRA run on TREC and one on AG News. Their bodies' ΔW merged by
   linear task arithmetic (λ = 1 and the mean), TIES, DARE-linear and DARE-TIES (density 0.5 and 0.2);
   each task scored on test with its own head on the merged body.
3. DIMAT: 5 agents, each an MLP (384 → 64 → 4, its own random init) on frozen MiniLM sentence
   embeddings of AG News, data split non-IID (Dirichlet α = 0.5); 10 rounds of merge + one local
   epoch; DIMAT (fully connected, ring), plain weighted averaging (fully connected) and no merging;
   mean agent accuracy on a global held-out set per round.

    .venv/bin/python benchmarks/merging_minilm.py             # about 20 minutes on 2 cores
    .venv/bin/python benchmarks/merging_minilm.py --quick --out /tmp/m    # a smoke run

Every LoRA run: r=8, alpha=16 on attn.q/attn.v, 200 steps of 16 × 64 tokens, 2000 train / 500 dev /
500 test examples per task (the bench's budget). Writes merging.json, merging.md and soups/multitask/dimat PNGs to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import petkit
from petkit.merge import adapter_soup, add_delta_adapter, check_same_base, merge_deltas, weight_deltas
from petkit.merge.dimat import run_dimat, topology
from petkit.pipeline import RunSpec, prepare
from petkit.pipeline import run as run_one
from petkit.train import evaluate

SOUP_LRS = (1e-3, 2e-3, 5e-3, 1e-2)
MERGES = [("linear λ=1", "linear", None, None), ("linear mean", "linear", None, "mean"),
          ("TIES d=0.5", "ties", 0.5, None), ("TIES d=0.2", "ties", 0.2, None),
          ("DARE-linear d=0.5", "dare_linear", 0.5, None), ("DARE-TIES d=0.5", "dare_ties", 0.5, None)]


def lora_spec(task: str, lr: float, args) -> RunSpec:
    return RunSpec(model="minilm", data=task, method={"name": "lora", "r": 8, "alpha": 16, "targets": ["attn.q", "attn.v"]},
                   train={"lr": lr, "max_steps": args.steps, "batch_size": 16, "eval_every_epoch": False},
                   max_length=64, max_train=args.max_train, max_eval=args.max_eval, seed=0)


def lora_run(task: str, lr: float, args) -> dict:
    spec = lora_spec(task, lr, args)
    report = run_one(spec, progress=False, log=lambda *a: None)
    return {"am": report["_adapted"], "prep": report["_prepared"], "task": task, "lr": lr}


def accuracy(model, prep, split: str) -> float:
    return float(evaluate(model, getattr(prep, split), prep.task, batch_size=32)["accuracy"])


def soups(runs: list[dict], args) -> dict:
    """Every SST-2 run's adapter loaded side by side onto one fresh base (same seed: same head init)."""
    prep = prepare(lora_spec("sst2", runs[0]["lr"], args))
    am = prep.model
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            run["name"] = f"lr{run['lr']:g}".replace(".", "_")
            run["am"].save(Path(tmp) / run["name"])
            am = petkit.load(am, Path(tmp) / run["name"], as_name=run["name"])
    names = [run["name"] for run in runs]
    singles = {}
    for n in names:
        am.set_active(n)
        singles[n] = {"dev": accuracy(am, prep, "dev"), "test": accuracy(am, prep, "test")}
    greedy = adapter_soup(am, names, lambda m: accuracy(m, prep, "dev"), into="greedy")
    adapter_soup(am, names, into="uniform")
    out = {"singles": singles, "greedy_ingredients": greedy.ingredients}
    for n in ("greedy", "uniform"):
        am.set_active(n)
        out[n] = {"dev": accuracy(am, prep, "dev"), "test": accuracy(am, prep, "test")}
    best = max(singles, key=lambda n: singles[n]["dev"])
    out["best_single"] = {"name": best, **singles[best]}
    return out


def multitask(runs: dict[str, dict]) -> dict:
    tasks = list(runs)
    for t in tasks[1:]:
        check_same_base([(runs[t]["am"], "default")], runs[tasks[0]]["am"])
    deltas = [weight_deltas(runs[t]["am"], "default") for t in tasks]
    results = {"individual": {t: accuracy(runs[t]["am"], runs[t]["prep"], "test") for t in tasks}}
    for label, method, density, weighting in MERGES:
        weights = [1.0 / len(tasks)] * len(tasks) if weighting == "mean" else [1.0] * len(tasks)
        merged = merge_deltas(deltas, method, weights, density, seed=0)
        row = {}
        for t in tasks:
            am = runs[t]["am"]
            am.add(petkit.ProbeConfig(), "head")  # the task's own trained head, alone
            _copy_head(am, "default", "head")
            add_delta_adapter(am, merged, rank=64, into="merged", method=method)
            am.set_active(petkit.Stack("merged", "head"))
            row[t] = accuracy(am, runs[t]["prep"], "test")
            am.set_active("default")
            am.delete("merged")
            am.delete("head")
        row["mean"] = sum(row[t] for t in tasks) / len(tasks)
        results[label] = row
    results["individual"]["mean"] = sum(results["individual"][t] for t in tasks) / len(tasks)
    return results


def _copy_head(am, source: str, target: str) -> None:
    from petkit.methods.head import HeadDelta
    heads = {p: d for p, _, d in am.layers(source) if isinstance(d, HeadDelta)}
    with torch.no_grad():
        for path, _, delta in am.layers(target):
            delta.module.load_state_dict(heads[path].module.state_dict())


def dimat_experiment(args) -> dict:
    from petkit.models import load_model, load_tokenizer
    from petkit.data import load_dataset

    data = load_dataset("ag_news", seed=0)
    rows = (data.train + data.dev + data.test)[: args.dimat_examples]
    tokenizer, encoder = load_tokenizer("minilm"), load_model("minilm", task="base").eval()
    features, labels = [], []
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            chunk = rows[start:start + 64]
            enc = tokenizer([r["text"] for r in chunk], padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = encoder(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None]
            features.append((hidden * mask).sum(1) / mask.sum(1))
            labels += [r["label"] for r in chunk]
    x, y = torch.cat(features), torch.tensor(labels)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    test, train = order[: len(y) // 5], order[len(y) // 5:]
    agents = 5
    torch.manual_seed(0)
    shares = torch.distributions.Dirichlet(torch.full((agents,), 0.5)).sample((4,))  # per class, per agent
    parts = [[] for _ in range(agents)]
    for c in range(4):
        idx = train[y[train] == c]
        cuts = (shares[c].cumsum(0) * len(idx)).long().tolist()
        for a, (lo, hi) in enumerate(zip([0] + cuts[:-1], cuts)):
            parts[a] += idx[lo:hi].tolist()
    batches = [[(x[p[i:i + 32]], y[p[i:i + 32]]) for i in range(0, len(p), 32)] for p in parts]

    def fresh(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 4))

    def train(model, agent):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for xb, yb in batches[agent]:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()

    def score(models):
        with torch.no_grad():
            return sum((m(x[test]).argmax(-1) == y[test]).float().mean().item() for m in models) / len(models)

    out = {"agents": agents, "examples_per_agent": [len(p) for p in parts]}
    for label, kind, align in (("DIMAT, fully connected", "fully_connected", True), ("DIMAT, ring", "ring", True),
                               ("plain averaging, fully connected", "fully_connected", False),
                               ("no merging", "disconnected", False)):
        models = [fresh(s) for s in range(agents)]
        for a, m in enumerate(models):  # phase 0: local training before any merging
            train(m, a)
        out[label] = [score(models)] + run_dimat(models, batches, lambda m, b: m(b[0]), train, args.rounds,
                                                 topology(kind, agents), align=align, evaluate=score)
    return out


def render(results: dict, out: Path) -> None:
    """merging.md (three tables) and three plots from the results."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    soup, multi, dimat = results["soups"], results["multitask"], results["dimat"]
    lines = ["## Soups (SST-2, 4 LoRA runs differing in learning rate; accuracy %)", "",
             "| model | dev | test |", "|---|---|---|"]
    rows = [(n, v) for n, v in soup["singles"].items()] + [("uniform soup", soup["uniform"]),
                                                           ("greedy soup (" + ", ".join(soup["greedy_ingredients"]) + ")",
                                                            soup["greedy"])]
    lines += [f"| {n} | {100 * v['dev']:.1f} | {100 * v['test']:.1f} |" for n, v in rows]
    tasks = [t for t in multi["individual"] if t != "mean"]
    lines += ["", "## Multi-task merge of one LoRA per task (test accuracy %, each task with its own head)", "",
              "| merge | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
    lines += [f"| {label} | " + " | ".join(f"{100 * row[t]:.1f}" for t in tasks) + f" | {100 * row['mean']:.1f} |"
              for label, row in multi.items()]
    runs = [k for k in dimat if isinstance(dimat[k], list) and k != "examples_per_agent"]
    lines += ["", f"## DIMAT: {dimat['agents']} agents, non-IID AG News (mean agent accuracy % on held-out data)", "",
              "| schedule | before merging | after round 1 | last round |", "|---|---|---|---|"]
    lines += [f"| {k} | {100 * dimat[k][0]:.1f} | {100 * dimat[k][1]:.1f} | {100 * dimat[k][-1]:.1f} |" for k in runs]
    (out / "merging.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(rows)), [100 * v["test"] for _, v in rows], color=["0.6"] * len(soup["singles"]) + ["C0", "C1"])
    ax.set_xticks(range(len(rows)), [n.split(" (")[0] for n, _ in rows], rotation=20)
    ax.set_ylabel("SST-2 test accuracy (%)")
    ax.set_ylim(min(100 * v["test"] for _, v in rows) - 5, 100)
    fig.tight_layout()
    fig.savefig(out / "soups.png", dpi=120)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(tasks)
    for k, t in enumerate(tasks):
        ax.bar([i + k * width for i in range(len(multi))], [100 * row[t] for row in multi.values()], width, label=t)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(multi))], list(multi), rotation=20)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(min(100 * row[t] for row in multi.values() for t in tasks) - 5, 100)
    ax.legend(ncol=len(tasks), loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "multitask.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k in runs:
        ax.plot(range(len(dimat[k])), [100 * v for v in dimat[k]], marker="o", label=k)
    ax.set_xlabel("round (0: local training only)")
    ax.set_ylabel("mean agent accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "dimat.png", dpi=120)
    plt.close("all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "merging-minilm")
    parser.add_argument("--report-only", action="store_true", help="re-render merging.md and the plots from merging.json")
    args = parser.parse_args()
    if args.report_only:
        render(json.loads((args.out / "merging.json").read_text()), args.out)
        return
    args.steps, args.max_train, args.max_eval = (10, 64, 32) if args.quick else (200, 2000, 500)
    args.rounds, args.dimat_examples = (2, 400) if args.quick else (10, 7600)
    torch.set_num_threads(1 if args.quick else 2)
    sst2 = [lora_run("sst2", lr, args) for lr in SOUP_LRS]
    soup = soups(sst2, args)
    best_lr = next(run["lr"] for run in sst2 if run["name"] == soup["best_single"]["name"])
    tasks = {"sst2": lora_run("sst2", best_lr, args), "trec": lora_run("trec", 5e-3, args),
             "ag_news": lora_run("ag_news", 5e-3, args)}
    results = {"soups": soup, "multitask": multitask(tasks), "dimat": dimat_experiment(args), "quick": args.quick}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "merging.json").write_text(json.dumps(results, indent=2) + "\n")
    render(results, args.out)
    print((args.out / "merging.md").read_text())


if __name__ == "__main__":
    main()
