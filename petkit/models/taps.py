"""Taps on a stack of transformer layers: what each layer read and wrote in the current forward,
detached, for side networks that read the frozen backbone (LST ladders, SHERL's tiers)."""

from __future__ import annotations

import torch
from torch import nn


def hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a transformer layer is called with (first positional or `hidden_states=`)."""
    return args[0] if args else kwargs["hidden_states"]


def output_hidden(out) -> torch.Tensor:
    """The hidden states a transformer layer returns (a tensor, or the first item of a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """A layer call's (args, kwargs) with other hidden states: what a forward pre-hook returns."""
    return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})


def with_output_hidden(out, hidden: torch.Tensor):
    """A layer's output with other hidden states: what a forward hook returns."""
    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


class Captures:
    """The inputs one module was called with since they were last taken, for a reader that pairs one
    with a tensor of the same tokens. A module may run on other inputs within the same forward
    (DeBERTa runs its query and key projections on the relative-position embeddings too, after the
    tokens): `take(like)` returns the first input whose leading (batch, tokens) shape is like's, or
    None, and forgets them all."""

    def __init__(self, keep: int = 8):
        self._values: list[torch.Tensor] = []
        self._keep = keep

    def add(self, value: torch.Tensor) -> None:
        self._values = self._values[-(self._keep - 1):] + [value]

    def take(self, like: torch.Tensor) -> torch.Tensor | None:
        found = next((v for v in self._values if v.shape[:-1] == like.shape[:-1]), None)
        self._values = []
        return found

    def clear(self) -> None:
        self._values = []


class LayerTaps:
    """`embedding` (layer 0's input) and `outputs[i]` (layer i's output) of the forward under way,
    kept in that call's frame (`frames`, the CallFrames of a ModelDelta.hook_call around the stack),
    so a forward nested in another does not overwrite the outer one's.

    Installs its hooks through `hook(module, pre, fn)` (a ModelDelta's, so they follow its adapter's
    live state); `layers` limits which outputs are kept."""

    def __init__(self, hook, stack: nn.ModuleList, frames, layers=None):
        self._frames = frames
        keep = range(len(stack)) if layers is None else layers
        hook(stack[0], True, self._read_input)
        for i in keep:
            hook(stack[i], False, self._writer(i))

    @property
    def embedding(self) -> torch.Tensor | None:
        frame = self._frames.current
        return None if frame is None else frame.get("taps.embedding")

    @property
    def outputs(self) -> dict[int, torch.Tensor]:
        frame = self._frames.current
        return {} if frame is None else frame.get("taps.outputs", {})

    def _read_input(self, module, args, kwargs):
        frame = self._frames.top
        frame["taps.embedding"] = hidden_of(args, kwargs).detach()
        frame["taps.outputs"] = {}

    def _writer(self, index: int):
        def write(module, args, kwargs, out):
            self._frames.top["taps.outputs"][index] = output_hidden(out).detach()
        return write
