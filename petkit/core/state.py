"""One place for adapter state: which adapters exist, which are active, merged, or routed.

Wrapped layers hold only tensors; they read this object (shared by reference) on every forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from petkit.core.composition import Composition
from petkit.core.config import AdapterConfig


@dataclass
class AdapterState:
    configs: dict[str, AdapterConfig] = field(default_factory=dict)
    active: tuple[str, ...] = ()
    merged: list[str] = field(default_factory=list)  # in merge order; unmerge runs in reverse
    disabled: bool = False
    # During a mixed-adapter forward: adapter name (None = base) -> sample indices (LongTensor or slice)
    routes: dict[str | None, "torch.Tensor | slice"] | None = None
    # set_active(Parallel(...)) etc.: how the active adapters combine in each layer (None: stacked in order)
    composition: "Composition | None" = None

    def live(self, present) -> list[str]:
        """Active adapters present in a layer's deltas that are not merged into its weights."""
        if self.disabled:
            return []
        return [n for n in self.active if n in present and n not in self.merged]
