"""Linear probing (the task head alone) as a baseline. The head trained along with any adapter is
the engine's (petkit/core/head.py); a probe is an adapter made of that head and nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from petkit.core.config import AdapterConfig, check
from petkit.core.registry import Method, MethodDefaults, register


@dataclass(frozen=True)
class ProbeConfig(AdapterConfig):
    """Linear probing: only the task head trains (targets are ignored; the head is found by name)."""

    train_head: object = True

    def validate(self):
        check(self.train_head is True, "linear probing trains the head by definition; train_head must stay True")


register(Method(
    name="probe", config=ProbeConfig, kind="head", build=None, layer_types=(), mergeable=True,
    spec="baseline: frozen features + trained head", summary="task head only (linear probe)",
    bench=MethodDefaults({}, (1e-2, 3e-2), "baseline"),
))
