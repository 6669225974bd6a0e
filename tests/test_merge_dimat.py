"""DIMAT: topologies, activation matching recovers a permutation, aligned averaging vs plain averaging,
and the round loop on a toy decentralised task."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from petkit import ConfigError
from petkit.merge.dimat import aligned, merge_round, permute_units, run_dimat, topology


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))


def forward(model, batch):
    return model(batch[0])


def data(seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)) for _ in range(n)]


def test_topologies_are_row_stochastic_with_the_right_neighbours():
    ring = topology("ring", 5)
    assert torch.allclose(ring.sum(1), torch.ones(5)) and (ring > 0).sum(1).tolist() == [3] * 5
    assert ring[0, 4] > 0 and ring[0, 2] == 0
    assert torch.equal(topology("disconnected", 3), torch.eye(3))
    with pytest.raises(ConfigError, match="topology must be one of"):
        topology("star", 3)


def test_bipartite_hubs_average_every_leaf_as_in_the_official_code():
    """The official BiparTopology, N = 5, a = 1/(N−1) = .25: a leaf keeps 1 − 2a = .5 and takes a from
    each hub (agents 3, 4); a hub takes a from each of the 3 leaves, keeps 1 − 3a = .25 and takes
    nothing from the other hub."""
    expected = torch.tensor([[.50, .00, .00, .25, .25],
                             [.00, .50, .00, .25, .25],
                             [.00, .00, .50, .25, .25],
                             [.25, .25, .25, .25, .00],
                             [.25, .25, .25, .00, .25]])
    torch.testing.assert_close(topology("bipartite", 5), expected)
    torch.testing.assert_close(topology("bipartite", 3), torch.tensor([[0.0, .5, .5], [.5, .5, 0], [.5, 0, .5]]))
    for n in (3, 4, 5, 8):
        mixed = torch.linalg.matrix_power(topology("bipartite", n).double(), 60)
        assert mixed.min() > 0.5 / n  # repeated mixing carries every agent's model to every agent


def test_matching_recovers_a_random_permutation_and_the_aligned_average_is_the_model():
    model = mlp(0)
    shuffled = copy.deepcopy(model)
    permute_units(shuffled, [torch.randperm(16), torch.randperm(12)])
    batches = data(1)
    with torch.no_grad():
        torch.testing.assert_close(model(batches[0][0]), shuffled(batches[0][0]), atol=1e-5, rtol=1e-5)  # same function
    back = aligned(model, shuffled, batches, forward)
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    pi = topology("fully_connected", 2)
    dimat = merge_round([model, shuffled], pi, [batches, batches], forward)[0]
    plain = merge_round([model, shuffled], pi, [batches, batches], forward, align=False)[0]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(dimat[k], v, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(plain["0.weight"], model.state_dict()["0.weight"], atol=1e-3)


def test_dimat_rounds_keep_permuted_copies_of_one_model_and_plain_averaging_does_not():
    """Three agents hold one MLP with its hidden units shuffled differently: the same function. Fully
    connected rounds (no local training) that align before averaging leave every agent computing it;
    averaging unaligned units (align=False) does not."""
    model = mlp(0)
    g = torch.Generator().manual_seed(5)
    agents = [copy.deepcopy(model) for _ in range(3)]
    for agent in agents[1:]:
        permute_units(agent, [torch.randperm(16, generator=g), torch.randperm(12, generator=g)])
    x = data(99, 1)[0][0]
    with torch.no_grad():
        target = model(x)

    def gap(models):
        with torch.no_grad():
            return max((m(x) - target).abs().max().item() for m in models)

    def rounds(align):
        models = [copy.deepcopy(a) for a in agents]
        return run_dimat(models, [data(20 + a) for a in range(3)], forward, lambda m, a: None, 2,
                         topology("fully_connected", 3), align=align, evaluate=gap)

    assert gap(agents) < 1e-5
    assert max(rounds(align=True)) < 1e-4
    assert min(rounds(align=False)) > 0.05


def test_rounds_bring_agents_together_and_a_disconnected_round_changes_nothing():
    """Three agents from different random inits: after two fully connected DIMAT rounds their outputs
    agree far more than those of agents trained alone for as long (the 'disconnected' topology)."""
    batches = [data(10 + a) for a in range(3)]

    def train(model, agent):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for x, y in batches[agent]:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    def spread(ms):
        x = data(99, 1)[0][0]
        with torch.no_grad():
            outs = torch.stack([m(x) for m in ms])
        return (outs - outs.mean(0)).abs().mean().item()

    alone = [mlp(s) for s in range(3)]
    same = merge_round(alone, topology("disconnected", 3), batches, forward)
    assert all(torch.equal(same[i][k], m.state_dict()[k]) for i, m in enumerate(alone) for k in same[i])
    alone_history = run_dimat(alone, batches, forward, train, 2, topology("disconnected", 3), evaluate=spread)
    merged = [mlp(s) for s in range(3)]
    history = run_dimat(merged, batches, forward, train, 2, topology("fully_connected", 3), evaluate=spread)
    assert len(history) == 2 and history[-1] < 0.5 * alone_history[-1]


def test_bad_mixing_matrix():
    with pytest.raises(ConfigError, match="rows sum to 1"):
        merge_round([mlp(0), mlp(1)], torch.ones(2, 2), [data(0), data(1)], forward)
