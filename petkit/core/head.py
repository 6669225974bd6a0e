"""The task head an adapter trains along with it (PEFT's `modules_to_save`).

A freshly initialised head (`classifier`, `score`) must be trained for any classification method.
Each adapter gets its own copy, so adapters with different heads can share one base and even one
mixed batch. The engine attaches it to every kind of adapter (train_head), so it lives here, not
with the methods.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from petkit.core.layer import Delta


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
