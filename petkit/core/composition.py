"""How several active adapters combine: a small algebra over adapter names.

Inside every adapted layer, with y0 the base layer's output and d_a(y) adapter a's output given y:

    Stack(a, b)                    d_b(d_a(y0))                     (the default for set_active([a, b]))
    Sum(a, b)                      y0 + Σ_i (d_i(y0) − y0)          every adapter reads the base output
    WeightedSum(a, b, weights=w)   y0 + Σ_i w_i (d_i(y0) − y0)      the weights as given, not normalised

Over the batch, at the top only and over names (AdaptedModel's forward and generate route samples):

    BatchSplit(a, b, sizes=n)      the first n_1 samples through a, the next n_2 through b, …
    Parallel(a, b)                 the batch copied once per adapter, copy i through adapter i; the
                                   outputs come back concatenated along the batch, a's rows first

Children of the layer blocks may be names or layer blocks (Stack(Sum(a, b), c)). Whole-model adapters
(prompts, side networks) only as names directly in a top-level Stack: they change what the whole
model reads, so they cannot be run side by side inside a layer nor routed sample by sample. For
weight deltas (LoRA …) Stack and Sum coincide and WeightedSum(a, b, w) equals the merged Σ w_i ΔW_i.

Names. AdapterHub's `Parallel` copies the batch and its `Average` normalises the weights. petkit
used those names for the sum and the weighted sum, so they are now `Sum` and `WeightedSum`;
`Parallel` means what it means in AdapterHub, and `Average` is a deprecated alias of WeightedSum.
"""

from __future__ import annotations

import math
import warnings
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
            if isinstance(child, BatchBlock):
                raise ConfigError(f"{type(child).__name__} {child.whole_batch}: use it at the top, not inside "
                                  f"{type(self).__name__}{child.nested_hint}")
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

    def __eq__(self, other) -> bool:  # by what is saved, so a deprecated alias equals its new name
        return isinstance(other, Composition) and self.to_dict() == other.to_dict()

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


class Sum(Composition):
    """Every adapter reads the base output; their changes add up: y0 + Σ_i (d_i(y0) − y0).
    (petkit called this `Parallel` before; AdapterHub's Parallel is something else, see Parallel.)"""
    kind = "sum"

    def apply(self, run, y0):
        return y0 + sum(_apply(c, run, y0) - y0 for c in self.children)


class WeightedSum(Composition):
    """y0 + Σ_i w_i (d_i(y0) − y0) with the weights exactly as given: not normalised, so [1, 1] is Sum,
    [0.5, 0.5] the mean and a negative weight subtracts (task arithmetic). One weight per child."""
    kind = "weighted_sum"

    def __init__(self, *children, weights: Sequence[float]):
        super().__init__(*children)
        weights = list(weights)
        if len(weights) != len(self.children) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
            raise ConfigError(f"{type(self).__name__} needs one finite weight per child ({len(self.children)}), "
                              f"got {weights}")
        self.weights = weights

    def to_dict(self) -> dict:
        return {**super().to_dict(), "weights": self.weights}

    def apply(self, run, y0):
        return y0 + sum(w * (_apply(c, run, y0) - y0) for w, c in zip(self.weights, self.children))


class Average(WeightedSum):
    """Deprecated: the old name of WeightedSum, kept for one release. Without weights, 1/n each."""

    def __init__(self, *children, weights: Sequence[float] | None = None):
        warnings.warn("petkit.Average is now called WeightedSum (it never normalised its weights, unlike "
                      "AdapterHub's Average); Average still works for now", FutureWarning, stacklevel=2)
        if weights is None:
            n = len(children[0]) if len(children) == 1 and isinstance(children[0], (list, tuple)) else len(children)
            weights = [1.0 / n] * n if n else []
        super().__init__(*children, weights=weights)


class BatchBlock(Composition):
    """A block over the batch rather than inside layers: it says which samples each adapter gets, and
    AdaptedModel's forward (and generate) routes them, as with adapter_names=. So: names only, at the top."""
    whole_batch = ""   # what it does to the batch, for messages
    nested_hint = ""

    def __init__(self, *children):
        super().__init__(*children)
        if not all(isinstance(c, str) for c in self.children):
            raise ConfigError(f"{type(self).__name__} routes samples to adapters by name; give it names, not "
                              "compositions")

    def plan(self, args: tuple, kwargs: dict) -> tuple[tuple, dict, list[str]]:  # pragma: no cover
        """The forward's (args, kwargs) as the model should run them, and one adapter name per sample."""
        raise NotImplementedError

    def apply(self, run, y0):
        raise StateError(f"{type(self).__name__} {self.whole_batch} in AdaptedModel's forward and generate; call "
                         "the AdaptedModel, not the model inside it")


class BatchSplit(BatchBlock):
    kind = "batch_split"
    whole_batch = "splits the whole batch"

    def __init__(self, *children, sizes: Sequence[int]):
        super().__init__(*children)
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

    def plan(self, args, kwargs):
        return args, kwargs, self.routes(batch_size(args, kwargs, "BatchSplit"))


PARALLEL_CHANGED = ("petkit.Parallel now means what it means in AdapterHub: the batch is copied once per adapter "
                    "and the outputs come back one block of rows per adapter. It used to add the adapters' changes "
                    "up inside each layer, which is now petkit.Sum. (This note goes away in the next release.)")


class Parallel(BatchBlock):
    """Multi-task inference in one pass, as AdapterHub's Parallel: every batch tensor (labels too) is
    repeated once per adapter along the batch, copy i runs through adapter i only (with its own task
    head, if it has one), and every output holds n·batch rows, adapter-major. `split(t)` cuts an output
    back into one tensor per adapter. A loss the model computes is the mean over all the copies, and
    each adapter's gradient comes from its own copy only. Adapters on layers only (LoRA, bottleneck
    adapters, IA³ …): whole-model adapters (prompts, side networks) cannot be routed."""
    kind = "parallel_batch"  # not "parallel": files written before the rename use that key for Sum
    whole_batch = "copies the whole batch, once per adapter"
    nested_hint = "; to add the adapters' changes up inside each layer use Sum (what Parallel used to mean)"

    def __init__(self, *children):
        warnings.warn(PARALLEL_CHANGED, FutureWarning, stacklevel=2)
        super().__init__(*children)

    def plan(self, args, kwargs):
        args, kwargs, size = repeat_batch(args, kwargs, len(self.children), "Parallel")
        return args, kwargs, [n for n in self.children for _ in range(size)]

    def split(self, output: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One tensor per adapter, in the order of the block, from an output of n·batch rows."""
        n = len(self.children)
        if output.dim() == 0 or output.shape[0] % n:
            raise StateError(f"Parallel over {n} adapters splits outputs of n·batch rows, got shape "
                             f"{tuple(output.shape)}")
        return tuple(output.split(output.shape[0] // n))


NOT_PER_SAMPLE = ("cache_position",)  # positions shared by every sample: the same for every copy


def batch_size(args: tuple, kwargs: dict, who: str) -> int:
    first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    if first is None:
        raise StateError(f"{who} needs a batch tensor (input_ids, pixel_values …) to route")
    return first.shape[0]


def repeat_batch(args: tuple, kwargs: dict, copies: int, who: str) -> tuple[tuple, dict, int]:
    """(args, kwargs) with every per-sample tensor repeated `copies` times along the batch (copy-major),
    and the original batch size. A tensor with another number of rows is refused: not knowing whether
    it is per sample, repeating it or not could both be wrong."""
    size = batch_size(args, kwargs, who)

    def repeat(key, value):
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or key in NOT_PER_SAMPLE:
            return value
        if value.shape[0] != size:
            raise StateError(f"{who} copies the batch once per adapter, but {key} has {value.shape[0]} rows where "
                             f"the batch has {size}")
        return value.repeat(copies, *([1] * (value.dim() - 1)))
    return (tuple(repeat(f"argument {i}", v) for i, v in enumerate(args)),
            {k: repeat(k, v) for k, v in kwargs.items()}, size)


KINDS = {cls.kind: cls for cls in (Stack, Sum, WeightedSum, BatchSplit, Parallel)}
OLD_KINDS = {"parallel": Sum, "average": WeightedSum}  # keys of files saved before the rename


def from_dict(data) -> Composition:
    """The inverse of to_dict: {"sum": ["a", {"stack": ["b", "c"]}]}, with weights / sizes."""
    if not isinstance(data, dict):
        raise ConfigError(f"a saved composition is a JSON object, got {type(data).__name__}")
    kinds = [k for k in data if k in KINDS or k in OLD_KINDS]
    extra = set(data) - set(kinds) - {"weights", "sizes"}
    if len(kinds) != 1 or extra:
        raise ConfigError(f"a saved composition names one of {', '.join(KINDS)}, got keys {sorted(data)}")
    kind = kinds[0]
    cls = KINDS.get(kind) or OLD_KINDS[kind]
    if kind in OLD_KINDS:
        warnings.warn(f"this saved composition uses the old name {kind!r} for what is now {cls.kind!r} "
                      f"({cls.__name__}); it loads as before, and saving it again writes the new name",
                      FutureWarning, stacklevel=2)
    children = data[kind]
    if not isinstance(children, list):
        raise ConfigError(f"the children of {kind} must be a list, got {type(children).__name__}")
    children = [c if isinstance(c, str) else from_dict(c) for c in children]
    options = {k: data[k] for k in ("weights", "sizes") if k in data}
    try:
        with warnings.catch_warnings():  # a Parallel read from a file is the new one: no note about the old
            warnings.filterwarnings("ignore", message="petkit.Parallel now means", category=FutureWarning)
            return cls(*children, **options)
    except TypeError as exc:
        raise ConfigError(f"bad options for {kind}: {exc}") from None
