"""One place for adapter state: which adapters exist, what each one touches, which are active,
merged, or routed.

Wrapped layers hold only tensors; they read this object (shared by reference) on every forward.
The engine (AdaptedModel) writes it; everything else (files, summaries, merging tools) reads it here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from petkit.core.composition import Composition
from petkit.core.config import AdapterConfig
from petkit.core.errors import ConfigError


@dataclass
class AdapterState:
    configs: dict[str, AdapterConfig] = field(default_factory=dict)
    modules: dict[str, list[str]] = field(default_factory=dict)   # adapter -> wrapped module paths (method + head)
    selected: dict[str, list[str]] = field(default_factory=dict)  # selection adapter -> base parameter names
    active: tuple[str, ...] = ()
    merged: list[str] = field(default_factory=list)  # in merge order; unmerge runs in reverse
    disabled: bool = False
    # During a mixed-adapter forward: adapter name (None = base) -> sample indices (LongTensor or slice)
    routes: dict[str | None, "torch.Tensor | slice"] | None = None
    route_names: tuple | None = None  # the same routing as one adapter name per sample (a cache key)
    # set_active(Sum(...)) etc.: how the active adapters combine, in layers or over the batch (None: stacked)
    composition: "Composition | None" = None

    def live(self, present) -> list[str]:
        """Active adapters present in a layer's deltas that are not merged into its weights."""
        if self.disabled:
            return []
        return [n for n in self.active if n in present and n not in self.merged]

    def check_names(self, names) -> None:
        """Raise a ConfigError naming the known adapters if any of `names` is not one of them."""
        for n in names:
            if n not in self.configs:
                known = ", ".join(self.configs) or "none"
                raise ConfigError(f"no adapter named {n!r}; adapters: {known}")
