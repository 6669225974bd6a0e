"""The baselines every continual method is compared with.

- seq-lora / seq-full: one adapter (LoRA, or any petkit method via `adapter`) or the whole backbone,
  trained on each task in turn: the forgetting a method has to beat.
- per-task: a fresh adapter per task, picked at test time by the task id: no forgetting by
  construction, so an upper bound for task-incremental streams (it needs the task id).
- joint: after each task, train on every task seen so far together (the data of all of them kept):
  the usual upper bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from petkit.core.config import AdapterConfig
from petkit.core.errors import ConfigError
from petkit.core.model import AdaptedModel, adapt
from petkit.core.registry import config_from_dict

from .learner import Learner, register_learner
from .model import Encoded

DEFAULT_ADAPTER = {"method": "lora", "r": 8, "alpha": 16}


def adapter_config(options: dict | None, default: dict = DEFAULT_ADAPTER) -> AdapterConfig:
    """A petkit adapter config from `{method: ..., <its settings>}` (default: LoRA r=8, alpha=16 on the
    method's default targets). The classifier's head is the learner's, so the adapter has none."""
    spec = dict(options) if options and "method" in options else {**default, **(options or {})}
    if not isinstance(spec.get("method"), str):
        raise ConfigError(f"adapter must be a mapping with a `method` name, got {options!r}")
    spec.setdefault("train_head", False)
    return config_from_dict(spec)


class AdapterLearner(Learner):
    """A learner that puts petkit adapters on the backbone (`self.am`)."""

    def __init__(self, adapter: dict | None = None, **options):
        super().__init__(**options)
        self.adapter = adapter_config(adapter)

    def setup(self, model, stream):
        super().setup(model, stream)
        if not isinstance(model.backbone, AdaptedModel):
            model.backbone = AdaptedModel(model.backbone)
        self.am: AdaptedModel = model.backbone

    def add(self, name: str, config: AdapterConfig | None = None) -> None:
        """Add an adapter and make it the only trainable one (the head stays trainable)."""
        adapt(self.am, config or self.adapter, name)
        for other in self.am.adapters:
            self.am.set_trainable(other, other == name)

    def describe(self) -> str:
        return f"{self.name} ({self.adapter.method})"


@register_learner
class SequentialAdapter(AdapterLearner):
    name = "seq-lora"

    def setup(self, model, stream):
        super().setup(model, stream)
        self.add("online")


@register_learner
class SequentialFull(Learner):
    name = "seq-full"
    trains_base = True

    def setup(self, model, stream):
        super().setup(model, stream)
        for p in model.backbone.parameters():
            p.requires_grad_(True)


@register_learner
class PerTaskAdapter(AdapterLearner):
    name = "per-task"
    scenarios = ("task",)

    def begin_task(self, t):
        self.add(f"task{t}")
        self.am.set_active(f"task{t}")

    def scores(self, batch, classes, task):
        self.am.set_active(f"task{task}")
        return super().scores(batch, classes, task)


@register_learner
class Joint(AdapterLearner):
    """After task t, train on tasks 0..t together: each example's loss over the classes it could be
    (every class seen so far; its own task's classes in the task-incremental scenario)."""

    name = "joint"
    replays_all = True

    def setup(self, model, stream):
        super().setup(model, stream)
        self.add("online")
        owner = [t for t, task in enumerate(stream.tasks) for _ in range(task.num_classes)]
        self.owner = torch.tensor(owner)

    def loss(self, batch, t):
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        classes = torch.arange(logits.shape[1])
        if self.stream.scenario == "task":
            allowed = self.owner[batch["labels"]][:, None] == self.owner[None, :]
        else:
            allowed = (classes < self.stream.offsets[t + 1]).expand(len(logits), -1)
        return F.cross_entropy(logits.masked_fill(~allowed, float("-inf")), batch["labels"])


def concat(parts: list[Encoded]) -> Encoded:
    return Encoded([i for p in parts for i in p.ids], [y for p in parts for y in p.labels])
