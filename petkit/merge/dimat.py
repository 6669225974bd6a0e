"""DIMAT: decentralised iterative merging-and-training (Saadati et al., CVPR 2024).

N agents, each with its own model and data, on a topology with a row-stochastic mixing matrix π
(fully connected: 1/N; ring: 1/3 to itself and each neighbour; bipartite: the last two agents are
hubs that average every leaf, see `topology`; disconnected: the identity). A round: every agent i
aligns each neighbour's model to its own by activation matching — per group of permutable hidden
units, the correlation between its units' activations and the neighbour's on agent i's data, then
the permutation maximising the total correlation (Hungarian algorithm) — averages
θ_i ← Σ_j π_ij P_j(θ_j), and then trains locally.
`align=False` is the plain weighted average (the paper's WA baseline).

Permutable units here: the hidden units between consecutive nn.Linear layers of an MLP (rows of the
first, columns of the next; element-wise activations commute with permutations). Activation
statistics come from agent i's own data (the official code uses the whole training set, which a
decentralised agent does not have; give every agent the same shared batches to do that instead).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from petkit.core.errors import ConfigError

TOPOLOGIES = ("fully_connected", "ring", "bipartite", "disconnected")


def topology(kind: str, n: int) -> torch.Tensor:
    """The mixing matrix π (n × n, rows sum to 1; π_ij > 0 only if j is i's neighbour or i itself).

    bipartite (the official `BiparTopology`): the last two agents are hubs, the others leaves, a = 1/(n−1).
    A leaf keeps 1 − 2a of itself and takes a from each hub; a hub takes a from every leaf, keeps
    1 − (n−2)a of itself and nothing from the other hub (n = 5: leaf [.5, 0, 0, .25, .25], hubs
    [.25, .25, .25, .25, 0] and [.25, .25, .25, 0, .25]). The official code rounds a down to two
    decimals (the same a for n = 3, 5, 6, 11, ...; 0.33 instead of 1/3 for n = 4)."""
    if kind not in TOPOLOGIES:
        raise ConfigError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {kind!r}")
    if not isinstance(n, int) or n < 1 or (kind == "bipartite" and n < 3):
        raise ConfigError(f"{kind} needs {'at least 3' if kind == 'bipartite' else 'at least 1'} agents, got {n!r}")
    if kind == "fully_connected":
        return torch.full((n, n), 1.0 / n)
    if kind == "disconnected":
        return torch.eye(n)
    if kind == "ring":
        pi = torch.zeros(n, n)
        for i in range(n):
            for j in {i, (i - 1) % n, (i + 1) % n}:
                pi[i, j] = 1.0
        return pi / pi.sum(1, keepdim=True)
    return _bipartite(n)


def _bipartite(n: int) -> torch.Tensor:
    a, leaves, hubs = 1.0 / (n - 1), range(n - 2), (n - 2, n - 1)
    pi = torch.zeros(n, n, dtype=torch.float64)
    for leaf in leaves:
        pi[leaf, leaf] = 1 - 2 * a
        pi[leaf, list(hubs)] = a
    for hub in hubs:
        pi[hub, list(leaves)] = a
        pi[hub, hub] = 1 - (n - 2) * a
    return pi.float()


def linear_pairs(model: nn.Module) -> list[tuple[nn.Linear, nn.Linear]]:
    """Consecutive Linear layers (in module order) whose shared hidden units can be permuted."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    pairs = [(a, b) for a, b in zip(linears, linears[1:]) if a.out_features == b.in_features]
    if not pairs:
        raise ConfigError(f"DIMAT found no consecutive Linear layers to align in {type(model).__name__}")
    return pairs


@torch.no_grad()
def unit_activations(model: nn.Module, batches: Sequence, forward: Callable) -> list[torch.Tensor]:
    """Per hidden-unit group, the activations (samples × units) entering the second Linear of each pair."""
    pairs = linear_pairs(model)
    store: list[list[torch.Tensor]] = [[] for _ in pairs]
    handles = [b.register_forward_pre_hook(lambda m, args, k=k: store[k].append(args[0].reshape(-1, args[0].shape[-1])))
               for k, (_, b) in enumerate(pairs)]
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(chunks) for chunks in store]


def match(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """perm with other[:, perm] best correlated with reference, unit by unit (Hungarian, maximising the
    summed correlation)."""
    from scipy.optimize import linear_sum_assignment

    def standardise(x):
        x = x.double() - x.double().mean(0)
        return x / x.norm(dim=0).clamp(min=1e-12)

    correlation = standardise(reference).T @ standardise(other)
    rows, cols = linear_sum_assignment(correlation.numpy(), maximize=True)
    return torch.as_tensor(cols[rows.argsort()], dtype=torch.long)


@torch.no_grad()
def permute_units(model: nn.Module, perms: Sequence[torch.Tensor]) -> None:
    """Reorder each pair's hidden units in place: rows (and bias) of the first Linear, columns of the next."""
    for (first, second), perm in zip(linear_pairs(model), perms):
        first.weight.copy_(first.weight[perm])
        if first.bias is not None:
            first.bias.copy_(first.bias[perm])
        second.weight.copy_(second.weight[:, perm])


def aligned(reference: nn.Module, other: nn.Module, batches: Sequence, forward: Callable) -> nn.Module:
    """A copy of other with its hidden units permuted to match reference's on batches."""
    mine, theirs = unit_activations(reference, batches, forward), unit_activations(other, batches, forward)
    copy_ = copy.deepcopy(other)
    permute_units(copy_, [match(a, b) for a, b in zip(mine, theirs)])
    return copy_


@torch.no_grad()
def merge_round(models: Sequence[nn.Module], pi: torch.Tensor, batches: Sequence[Sequence], forward: Callable, *,
                align: bool = True) -> list[dict[str, torch.Tensor]]:
    """Every agent's new state dict: Σ_j π_ij θ_j, neighbours aligned to agent i first (DIMAT) or not (WA)."""
    n = len(models)
    if pi.shape != (n, n) or not torch.allclose(pi.sum(1), torch.ones(n)) or (pi < 0).any():
        raise ConfigError(f"π must be a non-negative {n} × {n} matrix whose rows sum to 1")
    states = []
    for i in range(n):
        group = [j for j in range(n) if pi[i, j] > 0]
        parts = [models[j] if j == i or not align else aligned(models[i], models[j], batches[i], forward)
                 for j in group]
        sds = [p.state_dict() for p in parts]
        states.append({k: sum(pi[i, j].item() * sd[k].float() for j, sd in zip(group, sds)).to(sds[0][k].dtype)
                       for k in sds[0]})
    return states


def run_dimat(models: Sequence[nn.Module], batches: Sequence[Sequence], forward: Callable, train: Callable,
              rounds: int, pi: torch.Tensor, *, align: bool = True, evaluate: Callable | None = None) -> list:
    """rounds × (merge, then train(model, agent) locally); evaluate(models) after each round is recorded."""
    history = []
    for _ in range(rounds):
        for model, state in zip(models, merge_round(models, pi, batches, forward, align=align)):
            model.load_state_dict(state)
        for agent, model in enumerate(models):
            train(model, agent)
        if evaluate is not None:
            history.append(evaluate(models))
    return history
