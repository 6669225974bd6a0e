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

import math

from torch import nn

from petkit.core.errors import ConfigError
from petkit.core.model import adapt
from petkit.core.registry import config_from_dict

from .remove import remove_units
from .structured import StructuredPruner

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
