"""The contract of a continual-learning method, and the registry the runner and the CLI read.

A Learner decides what is attached to the model, what trains in each task and epoch, the loss of a
batch, what runs after each optimiser step, what happens at the end of a task, and how a test batch
is scored. The runner (`run.py`) owns everything else: the loop, the optimiser (a fresh one per
task), the evaluation after each task and the checkpoints.

Every hook has the plain default, so a method overrides only what it changes:
- loss: cross-entropy over the current task's classes only (old and future logits left out), as
  LAE's and OVOR's code train; the head is shared, one row per class.
- scores: the logits of the candidate classes (every class seen so far without a task id; the
  task's own classes with one).

State: what `begin_task` builds must be rebuilt by calling it again (the runner replays it on
resume, then loads the saved tensors), so data-dependent work belongs in `end_task`, and anything
that is not a tensor of the model goes in `extra_state`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.errors import ConfigError

from .model import ContinualClassifier, Encoded
from .stream import SCENARIOS, Stream


class Learner:
    name = ""
    scenarios: tuple[str, ...] = SCENARIOS
    trains_base = False  # the backbone's own weights change (full fine-tuning): checkpoints hold them
    replays_all = False  # task t trains on the data of tasks 0..t (joint training), not task t's alone

    def __init__(self, **options):
        if options:
            raise ConfigError(f"{self.name} takes no options {sorted(options)}")

    # -- building ---------------------------------------------------------------------------------
    def check(self, epochs: int) -> None:
        """Refuse run settings the method cannot work with (before anything is built)."""

    def setup(self, model: ContinualClassifier, stream: Stream) -> None:
        self.model, self.stream = model, stream

    def begin_task(self, t: int) -> None:
        """Structural changes for task t (new experts, a copy of a module); replayed on resume."""

    def parameters(self, t: int) -> list[nn.Parameter]:
        """Every parameter that may train in task t (the optimiser's; epochs may freeze some)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def begin_epoch(self, t: int, epoch: int) -> None:
        """Before each epoch of task t (freeze-then-tune toggles requires_grad here)."""

    # -- training ---------------------------------------------------------------------------------
    def loss(self, batch: dict, t: int) -> torch.Tensor:
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        return current_task_loss(logits, batch["labels"], self.stream.classes_of(t))

    def after_step(self, t: int) -> None:
        """After every optimiser step (LAE's EMA)."""

    def end_task(self, t: int, data: Encoded, batches: Callable) -> None:
        """After the last epoch of task t, with its training data: `batches(data, shuffle)` yields
        collated batches (OVOR's outlier epochs, L2M's key counts)."""

    # -- prediction -------------------------------------------------------------------------------
    def scores(self, batch: dict, classes: range, task: int | None) -> torch.Tensor:
        """(batch, len(classes)) scores, argmax = prediction. task: the task id when the scenario gives it."""
        return self.model(batch["input_ids"], batch["attention_mask"])[:, classes.start:classes.stop]

    def report(self, t: int, row: Callable) -> dict:
        """Extra per-task results for the record: `row(scores)` is the accuracy row after task t (test
        split; `split="dev"` for dev) that a scoring function like `scores` gives (LAE: each expert alone)."""
        return {}

    # -- state ------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def describe(self) -> str:
        return self.name


def current_task_loss(logits: torch.Tensor, labels: torch.Tensor, classes: range) -> torch.Tensor:
    return F.cross_entropy(logits[:, classes.start:classes.stop], labels - classes.start)


LEARNERS: dict[str, type[Learner]] = {}


def register_learner(cls: type[Learner]) -> type[Learner]:
    LEARNERS[cls.name] = cls
    return cls


def make_learner(name: str, options: dict | None = None) -> Learner:
    if name not in LEARNERS:
        raise ConfigError(f"unknown continual method {name!r}; known: {', '.join(sorted(LEARNERS))}")
    cls, options = LEARNERS[name], dict(options or {})
    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "options")]
    stray = [k for k in options if k not in known]
    if stray:
        raise ConfigError(f"{name} has no option {stray[0]!r}; its options: {', '.join(known) or 'none'}")
    return cls(**options)


def check_scenario(learner: Learner, stream: Stream) -> None:
    if stream.scenario not in learner.scenarios:
        only = " and ".join(f"{s}-incremental" for s in learner.scenarios)
        raise ConfigError(f"{learner.name} works on {only} streams only; stream {stream.name!r} is "
                          f"{stream.scenario}-incremental")
