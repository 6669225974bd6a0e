"""Task heads trained with an adapter, and linear probing (the head alone) as a baseline.

A freshly initialised head (`classifier`, `score`) must be trained for any classification method.
Each adapter gets its own copy (PEFT calls this `modules_to_save`), so adapters with different heads
can share one base and even one mixed batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.config import AdapterConfig, check
from petkit.core.layer import Delta
from petkit.core.registry import Method, register


class HeadDelta(Delta):
    """A trainable copy of the head that replaces its output."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(base)
        for p in self.module.parameters():
            p.requires_grad_(True)

    def forward(self, base, x, y):
        return self.module(x)

    @torch.no_grad()
    def merge(self, base):
        self._original = {k: v.detach().clone() for k, v in base.state_dict().items()}
        base.load_state_dict(self.module.state_dict())

    @torch.no_grad()
    def unmerge(self, base):
        base.load_state_dict(self._original)
        del self._original


@dataclass(frozen=True)
class ProbeConfig(AdapterConfig):
    """Linear probing: only the task head trains (targets are ignored; the head is found by name)."""

    train_head: object = True

    def validate(self):
        check(self.train_head is True, "linear probing trains the head by definition; train_head must stay True")


register(Method(
    name="probe", config=ProbeConfig, kind="head", build=None, layer_types=(), mergeable=True,
    spec="baseline: frozen features + trained head", summary="task head only (linear probe)",
))
