"""Shared by the petkit serve tests: a tiny Llama with distinct LoRA adapters, and what it should say."""

from __future__ import annotations

import torch

import petkit
from petkit.testing import tiny_llama


def lora_llama(names=("a", "b"), seed=0):
    """tiny_llama with LoRA adapters whose B is random, so every adapter changes the output."""
    am = petkit.AdaptedModel(tiny_llama(seed=seed))
    torch.manual_seed(seed)  # LoRA's A init
    gen = torch.Generator().manual_seed(1)
    for name in names:
        petkit.adapt(am, petkit.LoraConfig(r=4, targets="all-linear"), name)
        with torch.no_grad():
            for delta in am.deltas(name):
                delta.B.copy_(torch.randn(delta.B.shape, generator=gen) * 0.5)
    return am.eval()


def reference(am, ids: list[int], adapter, n: int) -> list[int]:
    """Greedy tokens for one sequence with one adapter active (None: the base), recomputing the whole
    sequence at every step: no cache, no padding, no batch."""
    ids = list(ids)
    with am.disabled() if adapter is None else _active(am, adapter), torch.no_grad():
        for _ in range(n):
            ids.append(int(am.base(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-n:]


class _active:
    def __init__(self, am, name):
        self.am, self.name = am, name

    def __enter__(self):
        self.before = self.am.active
        self.am.set_active([self.name])

    def __exit__(self, *exc):
        self.am.set_active(list(self.before))
