"""Server-side aggregation: FedAvg (weighted by local example counts), and its client-level
differentially private variant (DP-FedAvg, McMahan et al. 2018): each client's update is clipped to
L2 norm C, the clipped updates are averaged uniformly, and Gaussian noise N(0, (z·C / m)²) is added
to the average of m clients (noise multiplier z on the sum's sensitivity C).
"""

from __future__ import annotations

import torch

from petkit.core.errors import ConfigError

from .payload import State


def fedavg(updates: list[tuple[State, float]]) -> State:
    """Σ_k n_k·θ_k / Σ_k n_k, tensor by tensor (in float64, returned in each tensor's dtype)."""
    if not updates:
        raise ConfigError("nothing to average: no accepted client update")
    total = float(sum(n for _, n in updates))
    first = updates[0][0]
    return {name: (sum(state[name].double() * (n / total) for state, n in updates)).to(first[name].dtype)
            for name in first}


def update_norm(global_state: State, local: State) -> float:
    return float(torch.sqrt(sum(((local[k].double() - global_state[k].double()) ** 2).sum() for k in global_state)))


def clip_update(global_state: State, local: State, clip: float) -> State:
    """global + Δ·min(1, C/‖Δ‖) with Δ = local − global over all tensors together."""
    norm = update_norm(global_state, local)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: global_state[k] + (local[k] - global_state[k]) * scale for k in global_state}


def dp_fedavg(global_state: State, locals_: list[State], clip: float, noise_multiplier: float,
              generator: torch.Generator | None = None) -> State:
    """Uniform mean of the clipped updates plus N(0, (z·C/m)²) noise on every coordinate."""
    if clip <= 0 or noise_multiplier < 0:
        raise ConfigError(f"DP needs clip > 0 and noise_multiplier >= 0, got {clip}, {noise_multiplier}")
    m = len(locals_)
    mean = fedavg([(clip_update(global_state, s, clip), 1.0) for s in locals_])
    std = noise_multiplier * clip / m
    return {k: v + torch.randn(v.shape, generator=generator, dtype=torch.float64).to(v.dtype) * std
            for k, v in mean.items()}
