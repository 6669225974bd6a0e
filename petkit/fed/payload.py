"""What travels in federated tuning: the trainable tensors only (adapter + task head), by name.

A client's reply is checked against the global state it was sent before anything is averaged: the
same names, the same shapes, finite values, a positive example count. A reply that fails is rejected
with the reason; it never reaches the average.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from petkit.core.errors import ConfigError

State = dict[str, torch.Tensor]


def trainable_state(model: nn.Module) -> State:
    """Copies of the parameters with requires_grad, by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: State) -> None:
    """Copy a (checked) state into the model's trainable parameters."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    problem = check_update(params, state)  # reads only names and shapes of the reference
    if problem:
        raise ConfigError(f"the received state does not fit this model: {problem}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def check_update(reference: State, update: State, examples=1) -> str | None:
    """Why an update cannot be averaged into reference, or None if it can."""
    missing, extra = sorted(set(reference) - set(update)), sorted(set(update) - set(reference))
    if missing or extra:
        return f"tensor names differ from the global adapter's (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, value in update.items():
        if tuple(value.shape) != tuple(reference[name].shape):
            return f"{name} has shape {tuple(value.shape)}, the global adapter's is {tuple(reference[name].shape)}"
        if not value.is_floating_point():
            return f"{name} is {value.dtype}, not a floating-point tensor"
        if not bool(torch.isfinite(value).all()):
            return f"{name} holds non-finite values (NaN or inf)"
    if isinstance(examples, bool) or not isinstance(examples, (int, float)) or not examples > 0:
        return f"the reply's example count must be a positive number, got {examples!r}"
    return None


def nbytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class Reply(NamedTuple):
    """A client's reply the server accepted."""
    node: int
    state: State
    examples: float
    metrics: dict
