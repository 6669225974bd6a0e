"""How several active adapters combine at forward time: a small algebra over adapter names.

In every adapted layer, with y0 the base layer's output and d_a(y) adapter a's output given y:

    Stack(a, b)                  d_b(d_a(y0))                     (the default for set_active([a, b]))
    Parallel(a, b)               y0 + Σ_i (d_i(y0) − y0)          every adapter reads the base output
    Average(a, b, weights=w)     y0 + Σ_i w_i (d_i(y0) − y0)
    BatchSplit(a, b, sizes=n)    the first n_1 samples through a, the next n_2 through b, …

Children may be names or compositions (Stack(Parallel(a, b), c)); BatchSplit only at the top, over
names. Whole-model adapters (prompts, side networks) only as names directly in a top-level Stack:
they change what the whole model reads, so they cannot be run side by side inside a layer. For
weight deltas (LoRA …) Stack and Parallel coincide and Average(a, b, w) equals the merged
Σ w_i ΔW_i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from petkit.core.errors import ConfigError, StateError


class Composition:
    kind = ""

    def __init__(self, *children):
        if len(children) == 1 and isinstance(children[0], (list, tuple)):
            children = tuple(children[0])
        self.children = tuple(children)
        if len(self.children) < 2:
            raise ConfigError(f"{type(self).__name__} combines at least two adapters, got {len(self.children)}")
        for child in self.children:
            if isinstance(child, BatchSplit):
                raise ConfigError("BatchSplit splits the whole batch: use it at the top, not inside "
                                  f"{type(self).__name__}")
            if not isinstance(child, (str, Composition)):
                raise ConfigError(f"a composition holds adapter names or compositions, got {child!r}")
        # computed once: every adapted layer reads it on every forward
        self._leaves = tuple(n for c in self.children for n in ([c] if isinstance(c, str) else c.leaves()))
        twice = sorted({n for n in self._leaves if self._leaves.count(n) > 1})
        if twice:
            raise ConfigError(f"each adapter appears once in a composition; {twice} appear more often")

    def leaves(self) -> tuple[str, ...]:
        return self._leaves

    def to_dict(self) -> dict:
        return {self.kind: [c if isinstance(c, str) else c.to_dict() for c in self.children]}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.children))})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def apply(self, run, y0: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _apply(node, run, y: torch.Tensor) -> torch.Tensor:
    return run(node, y) if isinstance(node, str) else node.apply(run, y)


class Stack(Composition):
    kind = "stack"

    def apply(self, run, y0):
        y = y0
        for child in self.children:
            y = _apply(child, run, y)
        return y


class Parallel(Composition):
    kind = "parallel"

    def apply(self, run, y0):
        return y0 + sum(_apply(c, run, y0) - y0 for c in self.children)


class Average(Composition):
    kind = "average"

    def __init__(self, *children, weights: Sequence[float] | None = None):
        super().__init__(*children)
        weights = [1.0 / len(self.children)] * len(self.children) if weights is None else list(weights)
        if len(weights) != len(self.children) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
            raise ConfigError(f"Average needs one finite weight per child ({len(self.children)}), got {weights}")
        self.weights = weights

    def to_dict(self) -> dict:
        return {**super().to_dict(), "weights": self.weights}

    def apply(self, run, y0):
        return y0 + sum(w * (_apply(c, run, y0) - y0) for w, c in zip(self.weights, self.children))


class BatchSplit(Composition):
    kind = "batch_split"

    def __init__(self, *children, sizes: Sequence[int]):
        super().__init__(*children)
        if not all(isinstance(c, str) for c in self.children):
            raise ConfigError("BatchSplit routes samples to adapters by name; give it names, not compositions")
        sizes = list(sizes)
        if len(sizes) != len(self.children) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                                        for s in sizes):
            raise ConfigError(f"BatchSplit needs one positive size per adapter ({len(self.children)}), got {sizes}")
        self.sizes = sizes

    def to_dict(self) -> dict:
        return {**super().to_dict(), "sizes": self.sizes}

    def routes(self, batch: int) -> list[str]:
        if sum(self.sizes) != batch:
            raise StateError(f"BatchSplit sizes {self.sizes} add up to {sum(self.sizes)}, but the batch has {batch} "
                             "samples")
        return [n for n, s in zip(self.children, self.sizes) for _ in range(s)]


KINDS = {cls.kind: cls for cls in (Stack, Parallel, Average, BatchSplit)}


def from_dict(data) -> Composition:
    """The inverse of to_dict: {"parallel": ["a", {"stack": ["b", "c"]}]}, with weights / sizes."""
    if not isinstance(data, dict):
        raise ConfigError(f"a saved composition is a JSON object, got {type(data).__name__}")
    kinds = [k for k in data if k in KINDS]
    extra = set(data) - set(kinds) - {"weights", "sizes"}
    if len(kinds) != 1 or extra:
        raise ConfigError(f"a saved composition names one of {', '.join(KINDS)}, got keys {sorted(data)}")
    children = data[kinds[0]]
    if not isinstance(children, list):
        raise ConfigError(f"the children of {kinds[0]} must be a list, got {type(children).__name__}")
    children = [c if isinstance(c, str) else from_dict(c) for c in children]
    options = {k: data[k] for k in ("weights", "sizes") if k in data}
    try:
        return KINDS[kinds[0]](*children, **options)
    except TypeError as exc:
        raise ConfigError(f"bad options for {kinds[0]}: {exc}") from None
