"""Full fine-tuning as a method: the targeted base parameters train in place.

It is a baseline, so it goes through the same engine (training, saving, benchmarks) as the rest.
There is no separate delta: the weights themselves change, so it is always "merged", cannot be
disabled or unmerged, and its file holds the trained tensors themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from petkit.core.config import AdapterConfig
from petkit.core.registry import Method, MethodDefaults, register


@dataclass(frozen=True)
class FullConfig(AdapterConfig):
    """targets default to the whole model ("all"); name modules to fine-tune only part of it."""


register(Method(
    name="full", config=FullConfig, kind="selection", build=None, layer_types=(), mergeable=False,
    spec="baseline: every parameter trained", summary="full fine-tuning (in place)",
    default_targets=("all",),
    bench=MethodDefaults({}, (3e-5, 1e-4), "baseline"),
))
