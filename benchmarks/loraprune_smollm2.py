#!/usr/bin/env python
"""LoRAPrune on SmolLM2-135M, the spec's two checks:

1. Does the LoRA-only importance estimate rank heads and FFN channels like the true first-order score
   |∇W ⊙ W|? After a short LoRA warm-up (so B ≠ 0), one batch's scores per unit, Spearman correlation,
   against the correlation of random scores (20 draws).
2. Pruning 50% of heads and channels during LoRA training on Tiny Shakespeare: test perplexity of the
   smaller model with the LoRA criterion against magnitude and random scores under the same schedule,
   and against the dense model with the same LoRA training (no pruning) and before any training.

    .venv/bin/python benchmarks/loraprune_smollm2.py              # about an hour on 2 cores
    .venv/bin/python benchmarks/loraprune_smollm2.py --steps 20 --out /tmp/lp   # a smoke run

Writes loraprune.json and loraprune.md to benchmarks/results/loraprune-smollm2/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

import petkit  # noqa: E402
from petkit.core.registry import config_from_dict  # noqa: E402
from petkit.pipeline import RunSpec, prepare  # noqa: E402
from petkit.train.regression_metrics import spearman  # noqa: E402
from petkit.prune.loraprune import PAPER_LORA, loraprune  # noqa: E402
from petkit.prune.structured import StructuredPruner  # noqa: E402
from petkit.train import TrainConfig, evaluate  # noqa: E402

RUN = {"model": "smollm2", "data": "tiny_shakespeare", "max_length": 128, "max_eval": 64, "seed": 0}


def correlation(steps: int) -> dict:
    """Spearman of the LoRA-only unit scores with |∇W ⊙ W| unit scores, after `steps` LoRA steps."""
    prep = prepare(RunSpec.from_dict(RUN))
    model = prep.model
    am = petkit.adapt(model, config_from_dict(dict(PAPER_LORA, dropout=0.0)))
    optimizer = torch.optim.AdamW(am.trainable_parameters(), lr=1e-4)
    collate = prep.train.collate
    for step in range(steps):
        batch = collate([prep.train[i] for i in range(4 * step, 4 * step + 4)])
        am(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for _, layer, _ in am.layers("default"):
        layer.base_layer.weight.requires_grad_(True)
    batch = collate([prep.train[i] for i in range(1000, 1008)])
    am(**batch).loss.backward()
    scores = {}
    for criterion in ("lora", "grad"):
        pruner = StructuredPruner(am, 0.5, 100, criterion=criterion, exempt_first=0, exempt_last=False)
        units = [pruner.unit_scores(b) for b in pruner.blocks]
        pruner.release()
        scores[criterion] = {"heads": torch.cat([h for h, _ in units]), "channels": torch.cat([c for _, c in units])}
    generator = torch.Generator().manual_seed(0)
    out = {}
    for unit in ("heads", "channels"):
        truth = scores["grad"][unit]
        noise = [spearman(torch.rand(len(truth), generator=generator), truth) for _ in range(20)]
        out[unit] = {"spearman_lora": spearman(scores["lora"][unit], truth), "spearman_random_max": max(map(abs, noise)),
                     "units": len(truth)}
    return out


def prune_run(criterion: str | None, steps: int) -> dict:
    """LoRAPrune at 50% with `criterion` (None: the same LoRA training, nothing pruned)."""
    prep = prepare(RunSpec.from_dict(RUN))
    cfg = TrainConfig(lr=1e-4, max_steps=steps, batch_size=4, seed=0, warmup=0.0)
    started = time.perf_counter()
    if criterion is None:
        am = petkit.adapt(prep.model, config_from_dict(dict(PAPER_LORA)))
        from petkit.train import train
        train(am, prep.train, cfg, task="causal_lm", progress=False)
        model = am.merge_and_unload()
    else:
        model, _ = loraprune(prep.model, prep.train, cfg, ratio=0.5, criterion=criterion, progress=False)
    seconds = time.perf_counter() - started
    test = evaluate(model, prep.test, "causal_lm", batch_size=8)
    return {"criterion": criterion or "none (dense LoRA)", "parameters": sum(p.numel() for p in model.parameters()),
            "test_perplexity": test["perplexity"], "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "loraprune-smollm2")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "loraprune.json"
    record = json.loads(path.read_text()) if path.is_file() else {"steps": args.steps, "runs": {}}
    if "correlation" not in record:
        record["correlation"] = correlation(min(20, args.steps))
        path.write_text(json.dumps(record, indent=1))
    if "base" not in record:
        prep = prepare(RunSpec.from_dict(RUN))
        record["base"] = {"parameters": sum(p.numel() for p in prep.model.parameters()),
                          "test_perplexity": evaluate(prep.model, prep.test, "causal_lm", batch_size=8)["perplexity"]}
    for criterion in (None, "lora", "magnitude", "random"):
        key = criterion or "dense"
        if key not in record["runs"]:
            record["runs"][key] = prune_run(criterion, args.steps)
            path.write_text(json.dumps(record, indent=1))
            print(key, record["runs"][key], flush=True)
    lines = ["# LoRAPrune on SmolLM2-135M (Tiny Shakespeare)", "",
             f"LoRA r=8, α=16 on every attention and FFN projection; {record['steps']} steps of 4 × 128 tokens, lr 1e-4; "
             "50% of heads and FFN channels pruned on the cubic schedule (first 10% of layers and the last kept).", "",
             "| units | Spearman(LoRA estimate, true score) | largest |Spearman| of 20 random scorings | units |",
             "|---|---|---|---|"]
    for unit, c in record["correlation"].items():
        lines.append(f"| {unit} | {c['spearman_lora']:.3f} | {c['spearman_random_max']:.3f} | {c['units']} |")
    lines += ["", "| model | parameters | test perplexity | training seconds |", "|---|---|---|---|",
              f"| base, untrained | {record['base']['parameters']:,} | {record['base']['test_perplexity']:.2f} | – |"]
    for run in record["runs"].values():
        lines.append(f"| {run['criterion']} | {run['parameters']:,} | {run['test_perplexity']:.2f} | {run['seconds']} |")
    (args.out / "loraprune.md").write_text("\n".join(lines) + "\n")
    path.write_text(json.dumps(record, indent=1))
    print(f"report: {args.out / 'loraprune.md'}")


if __name__ == "__main__":
    main()
