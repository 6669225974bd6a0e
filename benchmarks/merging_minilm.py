#!/usr/bin/env python
"""Merging on real runs (issue 6, protocol of issue 15): soups, multi-task merges, DIMAT. MiniLM, data
from ../shared/data. Everything is repeated for 3 seeds (RunSpec.seed: the 2000/500/500 sample of each
task, the head and LoRA init, the data order) and reported as mean ± std. Nothing is chosen on test.

1. Soups: 4 LoRA runs on SST-2 that differ only in learning rate (one seed: the same head init and
   data order), each scored on dev and test; the uniform soup, and the greedy soup (order and
   acceptance on dev), both in ΔW space with the heads averaged. "best single" is the run best on dev.
2. Multi-task: the SST-2 run best on dev, one LoRA run on TREC and one on AG News. Their bodies' ΔW
   merged by task arithmetic, TIES and DARE (density 0.5 / 0.2), written back as a rank-64 LoRA (SVD;
   the relative re-factorisation error per module is recorded). θ = θ_pre + λ·τ_merged with λ chosen
   by mean dev accuracy over the tasks on a grid (TIES paper: λ on validation), the grid extended by
   one step when the choice sits at its edge; test reported at the dev-chosen λ. Each task scored with
   its own head on the merged body. "linear mean" (λ = 1/3, fixed) is kept as the untuned baseline.
3. DIMAT: 5 agents, each an MLP (384 → 64 → 4, its own random init) on frozen MiniLM sentence
   embeddings of AG News, data split non-IID (Dirichlet α = 0.5, drawn per seed); 10 rounds of merge +
   one local epoch; DIMAT (fully connected, ring, bipartite), plain weighted averaging (fully
   connected) and no merging; mean agent accuracy on a fixed global held-out set per round.

    .venv/bin/python benchmarks/merging_minilm.py             # about 1.5 CPU hours on 1 thread
    .venv/bin/python benchmarks/merging_minilm.py --quick --out /tmp/m    # a smoke run

Every LoRA run: r=8, alpha=16 on attn.q/attn.v, 200 steps of 16 × 64 tokens, 2000 train / 500 dev /
500 test examples per task. Writes merging.json, then merging.md and the soups/multitask/dimat PNGs
(merging_minilm_report.py) to --out.
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
sys.path.insert(0, str(HERE))

import petkit
from merging_minilm_report import render
from petkit.merge import adapter_soup, add_delta_adapter, check_same_base, merge_deltas, weight_deltas
from petkit.merge.dimat import run_dimat, topology
from petkit.pipeline import RunSpec, prepare
from petkit.pipeline import run as run_one
from petkit.train import evaluate

SOUP_LRS = (1e-3, 2e-3, 5e-3, 1e-2)
TASK_LR = 5e-3  # TREC and AG News
LAMBDAS = (0.5, 0.7, 1.0, 1.3, 1.6)
RANK = 64  # of the merged LoRA
MERGES = [("task arithmetic", "linear", None), ("TIES d=0.5", "ties", 0.5), ("TIES d=0.2", "ties", 0.2),
          ("DARE-linear d=0.5", "dare_linear", 0.5), ("DARE-TIES d=0.5", "dare_ties", 0.5)]
DIMAT_SCHEDULES = (("DIMAT, fully connected", "fully_connected", True), ("DIMAT, ring", "ring", True),
                   ("DIMAT, bipartite", "bipartite", True),
                   ("plain averaging, fully connected", "fully_connected", False),
                   ("no merging", "disconnected", False))


def lora_spec(task: str, lr: float, seed: int, args) -> RunSpec:
    return RunSpec(model="minilm", data=task, method={"name": "lora", "r": 8, "alpha": 16, "targets": ["attn.q", "attn.v"]},
                   train={"lr": lr, "max_steps": args.steps, "batch_size": 16, "eval_every_epoch": False},
                   max_length=64, max_train=args.max_train, max_eval=args.max_eval, seed=seed)


def lora_run(task: str, lr: float, seed: int, args) -> dict:
    report = run_one(lora_spec(task, lr, seed, args), progress=False, log=lambda *a: None)
    return {"am": report["_adapted"], "prep": report["_prepared"], "task": task, "lr": lr}


def accuracy(model, prep, split: str) -> float:
    return float(evaluate(model, getattr(prep, split), prep.task, batch_size=32)["accuracy"])


def soups(runs: list[dict], seed: int, args) -> dict:
    """Every SST-2 run's adapter loaded side by side onto one fresh base (same seed: same head init)."""
    prep = prepare(lora_spec("sst2", runs[0]["lr"], seed, args))
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


def multitask(runs: dict[str, dict], seed: int) -> dict:
    tasks = list(runs)
    for t in tasks[1:]:
        check_same_base([(runs[t]["am"], "default")], runs[tasks[0]]["am"])
    deltas = [weight_deltas(runs[t]["am"], "default") for t in tasks]
    for t in tasks:  # each task's own trained head, alone, to stack on the merged body
        runs[t]["am"].add(petkit.ProbeConfig(), "head")
        _copy_head(runs[t]["am"], "default", "head")
    results = {"individual": {split: {t: accuracy(runs[t]["am"], runs[t]["prep"], split) for t in tasks}
                              for split in ("dev", "test")}}
    mean = merge_deltas(deltas, "linear", [1.0 / len(tasks)] * len(tasks))
    results["linear mean (λ = 1/3)"] = {split: _scores(runs, mean, 1.0, "linear", split)[0]
                                        for split in ("dev", "test")}
    for label, method, density in MERGES:
        merged = merge_deltas(deltas, method, None, density, seed=seed)  # weights 1: τ_m before λ
        dev = {}

        def dev_mean(lam):
            dev[lam] = _scores(runs, merged, lam, method, "dev")[0]
            return sum(dev[lam].values()) / len(tasks)

        lam, by_lambda, at_edge = choose_lambda(dev_mean, LAMBDAS)
        test, errors = _scores(runs, merged, lam, method, "test")
        results[label] = {"lambda": lam, "dev_by_lambda": {f"{k:g}": v for k, v in by_lambda.items()},
                          "at_edge": at_edge, "dev": dev[lam], "test": test,
                          "svd_error": {"mean": sum(errors.values()) / len(errors), "max": max(errors.values())}}
    for t in tasks:
        runs[t]["am"].delete("head")
    return results


def choose_lambda(dev_mean, grid) -> tuple[float, dict[float, float], bool]:
    """λ with the best mean dev accuracy (the first on ties); when it is the grid's first or last point,
    one more point a step beyond it is tried. Returns (λ, {λ: mean dev}, whether λ is still at the edge)."""
    def argmax(scores):  # rounded: a mean of accuracies equal but for float noise is a tie
        return max(scores, key=lambda lam: round(scores[lam], 9))

    scores = {lam: dev_mean(lam) for lam in grid}
    best = argmax(scores)
    if best in (grid[0], grid[-1]):
        extra = round(grid[0] - (grid[1] - grid[0]) if best == grid[0] else grid[-1] + (grid[-1] - grid[-2]), 6)
        if extra > 0:
            scores[extra] = dev_mean(extra)
            best = argmax(scores)
    return best, dict(sorted(scores.items())), best in (min(scores), max(scores))


def _scores(runs, merged, lam, method, split) -> tuple[dict[str, float], dict[str, float]]:
    """({task: accuracy on split}, {module: SVD error}) of θ_pre + λ·merged with each task's own head."""
    out = {}
    for t, run in runs.items():
        am = run["am"]
        report = add_delta_adapter(am, {p: lam * dw for p, dw in merged.items()}, rank=RANK, into="merged",
                                   method=method)
        am.set_active(petkit.Stack("merged", "head"))
        out[t] = accuracy(am, run["prep"], split)
        am.set_active("default")
        am.delete("merged")
    return out, report.errors


def _copy_head(am, source: str, target: str) -> None:
    from petkit.core.head import HeadDelta
    heads = {p: d for p, _, d in am.layers(source) if isinstance(d, HeadDelta)}
    with torch.no_grad():
        for path, _, delta in am.layers(target):
            delta.module.load_state_dict(heads[path].module.state_dict())


def sentence_embeddings(args) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled frozen MiniLM embeddings and labels of the first dimat_examples AG News rows."""
    from petkit.data import load_dataset
    from petkit.models import load_model, load_tokenizer

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
    return torch.cat(features), torch.tensor(labels)


def dimat_experiment(x: torch.Tensor, y: torch.Tensor, seed: int, args) -> dict:
    """One seed: the non-IID split and the agents' inits; the held-out fifth is the same for every seed."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = order[: len(y) // 5], order[len(y) // 5:]
    agents = 5
    torch.manual_seed(seed)
    shares = torch.distributions.Dirichlet(torch.full((agents,), 0.5)).sample((4,))  # per class, per agent
    parts = [[] for _ in range(agents)]
    for c in range(4):
        idx = train[y[train] == c]
        cuts = (shares[c].cumsum(0) * len(idx)).long().tolist()
        for a, (lo, hi) in enumerate(zip([0] + cuts[:-1], cuts)):
            parts[a] += idx[lo:hi].tolist()
    batches = [[(x[p[i:i + 32]], y[p[i:i + 32]]) for i in range(0, len(p), 32)] for p in parts]

    def fresh(agent):
        torch.manual_seed(1000 * seed + agent)
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

    out = {"examples_per_agent": [len(p) for p in parts], "curves": {}}
    for label, kind, align in DIMAT_SCHEDULES:
        models = [fresh(a) for a in range(agents)]
        for a, m in enumerate(models):  # phase 0: local training before any merging
            train(m, a)
        out["curves"][label] = [score(models)] + run_dimat(models, batches, lambda m, b: m(b[0]), train, args.rounds,
                                                           topology(kind, agents), align=align, evaluate=score)
    return out


def one_seed(seed: int, args) -> tuple[dict, dict]:
    sst2 = [lora_run("sst2", lr, seed, args) for lr in SOUP_LRS]
    soup = soups(sst2, seed, args)
    best = next(run for run in sst2 if run["name"] == soup["best_single"]["name"])  # chosen on dev
    tasks = {"sst2": best, "trec": lora_run("trec", TASK_LR, seed, args),
             "ag_news": lora_run("ag_news", TASK_LR, seed, args)}
    return soup, multitask(tasks, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "merging-minilm")
    parser.add_argument("--report-only", action="store_true", help="re-render merging.md and the plots from merging.json")
    args = parser.parse_args()
    if args.report_only:
        render(json.loads((args.out / "merging.json").read_text()), args.out)
        return
    args.steps, args.max_train, args.max_eval = (10, 64, 32) if args.quick else (200, 2000, 500)
    args.rounds, args.dimat_examples = (2, 400) if args.quick else (10, 7600)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    results = {"seeds": seeds, "quick": args.quick, "lambdas": list(LAMBDAS), "rank": RANK,
               "soups": [], "multitask": [], "dimat": {"agents": 5, "per_seed": []}}
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        soup, multi = one_seed(seed, args)
        results["soups"].append(soup)
        results["multitask"].append(multi)
        (args.out / "merging.json").write_text(json.dumps(results, indent=2) + "\n")  # progress survives a crash
        print(f"seed {seed} done", flush=True)
    x, y = sentence_embeddings(args)
    results["dimat"]["per_seed"] = [dimat_experiment(x, y, seed, args) for seed in seeds]
    (args.out / "merging.json").write_text(json.dumps(results, indent=2) + "\n")
    render(results, args.out)
    print((args.out / "merging.md").read_text())


if __name__ == "__main__":
    main()
