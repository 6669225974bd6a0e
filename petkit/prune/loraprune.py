"""`loraprune`: LoRAPrune end to end: LoRA training with iterative structured pruning on the cubic
schedule, then the LoRA merged and the pruned heads and channels removed.

    small, record = loraprune(model, train_data, TrainConfig(lr=1e-4, epochs=2), ratio=0.5, task="causal_lm")
    save_structured(small, record, "runs/small")

The paper's settings (released code): LoRA r=8, α=16, dropout 0.05 on every attention and FFN
projection, pruning every 10 steps, EMA 0.9, the first 10% of the layers and the last one kept whole.
`criterion` "magnitude" and "random" run the same schedule with the other scores (the controls);
"grad" needs the frozen weights' own gradients, which training would then update, so it is for
analysis (`StructuredPruner` in your own loop), not here. A run cannot resume mid-way: the scores and
masks live in the pruner, not in the trainer's checkpoints.
"""

from __future__ import annotations

import json
import math

from torch import nn

from petkit.core.errors import ConfigError
from petkit.core.model import adapt
from petkit.core.registry import config_from_dict

from .remove import remove_units
from .structured import StructuredPruner, check_settings

PAPER_LORA = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "train_head": False,
              "targets": ["attn.q", "attn.k", "attn.v", "attn.out", "mlp.in", "mlp.out"]}


class _Pruning(nn.Module):
    """The adapted model as the trainer sees it, with the pruner hooked on the trainer's optimizer."""

    def __init__(self, am, pruner: StructuredPruner):
        super().__init__()
        self.am, self.pruner = am, pruner

    def forward(self, **batch):
        return self.am(**batch)

    def hook_optimizer(self, optimizer):
        return self.pruner.attach(optimizer)


def loraprune(model: nn.Module, train_data, cfg, *, ratio: float = 0.5, criterion: str = "lora",
              lora: dict = PAPER_LORA, every: int = 10, exempt_first: float = 0.1, exempt_last: bool = True,
              task: str = "causal_lm", progress: bool = True) -> tuple[nn.Module, dict]:
    """Train a LoRA (`lora`: its settings, the paper's by default) on `model` while pruning `ratio` of its heads and FFN channels; returns the smaller
    model (LoRA merged, units removed) and its structure record (for save_structured)."""
    from petkit.train import train

    if criterion == "grad":
        raise ConfigError("criterion='grad' needs the frozen weights' gradients, and the trainer would then train "
                          "them; use StructuredPruner in your own loop for that comparison")
    if cfg.output_dir:
        raise ConfigError("loraprune keeps its scores and masks in memory and cannot resume: leave output_dir unset")
    am = adapt(model, config_from_dict(dict(lora)))
    total = cfg.max_steps or cfg.epochs * math.ceil(math.ceil(len(train_data) / cfg.batch_size) / cfg.grad_accum)
    pruner = StructuredPruner(am, ratio, total, criterion=criterion, every=every, exempt_first=exempt_first,
                              exempt_last=exempt_last, seed=cfg.seed)
    train(_Pruning(am, pruner), train_data, cfg, task=task, progress=progress)
    pruner.prune_to(ratio)  # the schedule's end, whatever the step count rounded to
    plain = am.merge_and_unload()
    return plain, remove_units(plain, pruner)


def run_loraprune(run: dict, *, ratio: float = 0.5, criterion: str = "lora", output: str | None = None,
                  progress: bool = True, log=print, **pruner) -> dict:
    """`petkit prune lora`: load `run`'s model and language-modelling data (petkit.pipeline.RunSpec fields),
    measure test perplexity, LoRAPrune it, measure again, save the smaller model; returns the report."""
    import time
    from pathlib import Path

    from petkit.pipeline import RunSpec, prepare
    from petkit.train import evaluate

    from .remove import save_structured

    check_settings(ratio, criterion)
    spec = RunSpec.from_dict({**run, "output": None})
    prep = prepare(spec)
    if prep.task != "causal_lm":
        raise ConfigError(f"LoRAPrune here trains a language model; {spec.data} holds {prep.kind} data")
    cfg = spec.train_config()
    size = cfg.eval_batch_size or cfg.batch_size
    before = evaluate(prep.model, prep.test, "causal_lm", batch_size=size)
    params = sum(p.numel() for p in prep.model.parameters())
    log(f"{spec.model}: {params:,} parameters, test perplexity {before['perplexity']:.2f}")
    lora = {**PAPER_LORA, **({k: v for k, v in spec.method.items() if k != "name"} if spec.method.get("name") == "lora" else {})}
    started = time.perf_counter()
    small, record = loraprune(prep.model, prep.train, cfg, ratio=ratio, criterion=criterion, lora=lora,
                              progress=progress, **pruner)
    after = evaluate(small, prep.test, "causal_lm", batch_size=size)
    report = {"model": spec.model, "data": spec.data, "ratio": ratio, "criterion": criterion,
              "parameters_before": params, "parameters_after": sum(p.numel() for p in small.parameters()),
              "test_perplexity_before": before["perplexity"], "test_perplexity_after": after["perplexity"],
              "train_seconds": round(time.perf_counter() - started, 1)}
    log(f"pruned {ratio:.0%} of heads and channels ({criterion}): {report['parameters_after']:,} parameters, "
        f"test perplexity {after['perplexity']:.2f}")
    if output:
        report["bytes"] = save_structured(small, record, Path(output))
        (Path(output) / "result.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
