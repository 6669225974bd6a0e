"""Training a `CoOpClassifier` on few-shot input embeddings: Adam on the context (and meta-net),
full-batch or mini-batch cross-entropy, keeping the step with the best dev accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from petkit.core.errors import ConfigError

from .coop import CoOpClassifier


@dataclass(frozen=True)
class FitConfig:
    """``steps`` optimiser steps of Adam at ``lr`` (spec: 2e-3) on batches of ``batch_size`` (None = all
    examples each step); dev accuracy every ``eval_every`` steps picks the kept state (the last if no dev)."""

    steps: int = 200
    lr: float = 2e-3
    batch_size: int | None = None
    eval_every: int = 25
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"batch_size must be a positive int or None, got {self.batch_size!r}")


@dataclass
class FitResult:
    best_step: int
    best_dev_accuracy: float | None
    history: list[dict] = field(default_factory=list)


@torch.no_grad()
def accuracy(model: CoOpClassifier, features: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Share of rows whose highest logit is the label."""
    was_training = model.training
    model.eval()
    try:
        if model.meta_net is None:  # class embeddings do not depend on the input: compute them once
            g = model.class_embeddings()
            preds = (F.normalize(features, dim=-1) @ g.T).argmax(-1)
        else:
            preds = torch.cat([model(features[i:i + batch_size]).argmax(-1)
                               for i in range(0, len(features), batch_size)])
    finally:
        model.train(was_training)
    return (preds == labels).float().mean().item()


def fit_coop(model: CoOpClassifier, features: torch.Tensor, labels: torch.Tensor, config: FitConfig | None = None,
             dev: tuple[torch.Tensor, torch.Tensor] | None = None) -> FitResult:
    """Train the context in place; the model ends holding the kept (best-dev or last) state."""
    config = config or FitConfig()
    if len(features) != len(labels) or not len(features):
        raise ConfigError(f"features ({len(features)}) and labels ({len(labels)}) must be the same, non-zero length")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    batch = config.batch_size or len(features)
    best = (-1.0, 0, model.trainable_state())
    history = []
    model.train()
    for step in range(1, config.steps + 1):
        idx = torch.randperm(len(features), generator=generator)[:batch]
        loss = F.cross_entropy(model(features[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if dev is not None and (step % config.eval_every == 0 or step == config.steps):
            dev_acc = accuracy(model, *dev)
            history.append({"step": step, "loss": loss.item(), "dev_accuracy": dev_acc})
            if dev_acc > best[0]:
                best = (dev_acc, step, model.trainable_state())
    model.eval()
    if dev is None:
        return FitResult(config.steps, None, history)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in best[2]:
                p.copy_(best[2][name])
    return FitResult(best[1], best[0], history)
