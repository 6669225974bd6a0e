#!/usr/bin/env python
"""Essential sparsity on MiniLM: one-shot magnitude pruning of the attention and FFN weights at
0–90%, then full fine-tuning with the mask fixed, against layer-uniform, random and ERK pruning and 2:4;
plus what the pruned model costs on disk (petkit's sparse file) and whether a sparse format makes a
pruned layer faster on this CPU (torch's CSR matmul against the dense one, side by side).

    .venv/bin/python benchmarks/prune_minilm.py                 # the sweep (seeds 0 1; --seeds 0 1 2 adds one) and the tables
    .venv/bin/python benchmarks/prune_minilm.py --speed-only    # the disk/speed tables alone (a quiet machine)

Writes to benchmarks/results/prune-minilm/: seed<k>/sweep.json (resumable), prune.md, sweep.png, disk.json,
speed.json.
Selection happens on dev only: the tolerance point and the sharp drop are read on the dev curve.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from petkit.models import load_model  # noqa: E402
from petkit.prune import load_pruned, prune, save_pruned  # noqa: E402
from petkit.prune.report import plot_sweep, sweep_table  # noqa: E402
from petkit.prune.sweep import SweepConfig, run_sweep, summarise  # noqa: E402

RUN = {"model": "minilm", "data": "sst2", "method": {"name": "full"}, "max_length": 64, "max_train": 2000,
       "max_eval": 500, "train": {"lr": 5e-5, "epochs": 2, "batch_size": 16}}
KINDS = ["global", "layer", "random", "erk"]
# The curve whose knee is read gets every 10%; the controls only the points where they can differ from it
# (a full grid for all four kinds × 3 seeds is ~110 fine-tuning runs, too long for this CPU).
GLOBAL_SPARSITIES = [round(0.1 * i, 1) for i in range(10)]
CONTROL_SPARSITIES = [0.0, 0.5, 0.7, 0.9]


def sweep(seeds: list[int], out: Path) -> list[dict]:
    results = []
    for seed in seeds:
        run, output = {**RUN, "seed": seed}, str(out / f"seed{seed}")
        run_sweep(SweepConfig(run=run, kinds=["global"], sparsities=GLOBAL_SPARSITIES, output=output), progress=False)
        results.append(run_sweep(SweepConfig(run=run, kinds=KINDS[1:], sparsities=CONTROL_SPARSITIES, nm=[[2, 4]],
                                              output=output), progress=False))
    return results


def mean_result(results: list[dict]) -> dict:
    """The seeds' points averaged (dev and test), read again with the same rules."""
    by_key: dict = {}
    for r in results:
        for p in r["points"]:
            by_key.setdefault((p["kind"], p["sparsity"], tuple(p["nm"] or ())), []).append(p)
    points = [{**group[0], "dev": statistics.mean(p["dev"] for p in group),
               "test": statistics.mean(p["test"] for p in group), "seeds": len(group),
               "test_sd": statistics.stdev(p["test"] for p in group) if len(group) > 1 else 0.0}
              for group in by_key.values()]
    return summarise(points, SweepConfig(kinds=KINDS))


def spread_table(averaged: dict) -> str:
    """Test accuracy mean ± sd over seeds (and how many seeds) at every point."""
    lines = ["| kind | sparsity | test acc % (mean ± sd) | seeds |", "|---|---|---|---|"]
    for p in sorted(averaged["points"], key=lambda p: (p["kind"], p["sparsity"])):
        kind = f"{p['kind']} {p['nm'][0]}:{p['nm'][1]}" if p["nm"] else p["kind"]
        lines.append(f"| {kind} | {p['sparsity']:.0%} | {100 * p['test']:.1f} ± {100 * p['test_sd']:.1f} | {p['seeds']} |")
    return "\n".join(lines)


def speed(out: Path, repeats: int = 20) -> dict:
    """A MiniLM FFN-sized layer (1536 × 384) at 32 × 64 tokens: dense matmul against CSR at each sparsity."""
    torch.manual_seed(0)
    x = torch.randn(32 * 64, 384)
    rows = []
    for sparsity in (0.0, 0.5, 0.7, 0.9, 0.95, 0.99):
        w = torch.randn(1536, 384)
        w[torch.rand_like(w) < sparsity] = 0
        csr = w.to_sparse_csr()
        times = {"dense": [], "csr": []}
        for _ in range(repeats):  # interleaved, so drift hits both
            for name, fn in (("dense", lambda: x @ w.t()), ("csr", lambda: (csr @ x.t()).t())):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        dense, sparse = statistics.median(times["dense"]), statistics.median(times["csr"])
        rows.append({"sparsity": sparsity, "dense_ms": 1e3 * dense, "csr_ms": 1e3 * sparse, "csr_over_dense": sparse / dense})
    record = {"threads": torch.get_num_threads(), "rows": rows}
    (out / "speed.json").write_text(json.dumps(record, indent=1))
    return record


def disk(out: Path) -> dict:
    """MiniLM (2-label head) pruned once, saved with save_pruned: model.safetensors bytes against the dense
    model's own safetensors, and the pruned file read back (max |difference| of the weights)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dense = load_model("minilm", num_labels=2)
        dense.save_pretrained(Path(tmp) / "dense", safe_serialization=True)
        dense_bytes = (Path(tmp) / "dense" / "model.safetensors").stat().st_size
        for label, kwargs in [(f"{s:.0%}", {"sparsity": s}) for s in (0.0, 0.5, 0.7, 0.9)] + [("2:4", {"kind": "nm", "n": 2, "m": 4})]:
            model = load_model("minilm", num_labels=2)
            result = prune(model, **kwargs)
            folder = Path(tmp) / label.replace(":", "-").replace("%", "")
            size = save_pruned(model, result, folder)
            back = load_pruned(folder)
            error = max((a - b).abs().max().item() for a, b in zip(model.state_dict().values(), back.state_dict().values()))
            rows.append({"pattern": label, "bytes": size, "over_dense": size / dense_bytes, "max_abs_error": error})
    record = {"dense_bytes": dense_bytes, "rows": rows}
    (out / "disk.json").write_text(json.dumps(record, indent=1))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "prune-minilm")
    parser.add_argument("--speed-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# Essential sparsity on MiniLM (SST-2)", ""]
    if not args.speed_only:
        results = sweep(args.seeds, args.out)
        averaged = mean_result(results)
        plot_sweep(averaged, args.out / "sweep.png", f"MiniLM on SST-2, mean of {len(results)} seeds", 0.01)
        lines += [sweep_table(averaged), "", "![sweep](sweep.png)", "", "### Spread over seeds", "",
                  spread_table(averaged), ""]
    sizes = disk(args.out)
    lines += ["## On disk", "", f"Dense model.safetensors (fp32): {sizes['dense_bytes']:,} bytes. The pruned file keeps "
              "embeddings, norms, biases and the head dense; each pruned weight costs 1 bit + 32 bits per kept value.", "",
              "| pruned | model.safetensors bytes | / dense | max abs error read back |", "|---|---|---|---|"]
    lines += [f"| {r['pattern']} | {r['bytes']:,} | {r['over_dense']:.2f} | {r['max_abs_error']:.1e} |" for r in sizes["rows"]]
    lines += [""]
    record = speed(args.out)
    lines += ["## A sparse format on this CPU", "", "| sparsity | dense ms | CSR ms | CSR / dense |", "|---|---|---|---|"]
    lines += [f"| {r['sparsity']:.0%} | {r['dense_ms']:.2f} | {r['csr_ms']:.2f} | {r['csr_over_dense']:.2f} |"
              for r in record["rows"]]
    (args.out / "prune.md").write_text("\n".join(lines) + "\n")
    print(f"report: {args.out / 'prune.md'}")


if __name__ == "__main__":
    main()
