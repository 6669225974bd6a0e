"""MoRA (petkit/methods/mora.py): self-activated top-k routing over rank-1 experts, against a
hand-computed reference; the budget, pruning, init, (non-)merging and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import petkit
from petkit.methods.mora import MoraConfig, active_parameters
from petkit.testing import tiny_batch, tiny_bert, tiny_gpt2


class OneLayer(nn.Module):
    def __init__(self, d_in=5, d_out=3):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.proj(x)


def _mora(cfg_kwargs, d_in=5, d_out=3, seed=0):
    torch.manual_seed(seed)
    model = OneLayer(d_in, d_out)
    am = petkit.adapt(model, MoraConfig(targets=["proj"], **cfg_kwargs))
    delta = am.layer("proj").deltas["default"]
    with torch.no_grad():
        delta.B.normal_()  # as if trained
    return am, model, delta


def _reference(x, W, b, A, B, k, tau, threshold):
    """The spec's formula token by token, in plain Python loops."""
    out = []
    for token in x.tolist():
        a = [sum(A[i][j] * token[j] for j in range(len(token))) for i in range(len(A))]
        norm = math.sqrt(sum(v * v for v in a))
        s = [v / norm for v in a]
        chosen = sorted(range(len(s)), key=lambda i: -s[i])[:k]
        z = sum(math.exp(s[i] / tau) for i in chosen)
        y = [sum(W[o][j] * token[j] for j in range(len(token))) + b[o] for o in range(len(W))]
        for i in chosen:
            if threshold is not None and s[i] < threshold:
                continue
            w = math.exp(s[i] / tau) / z
            for o in range(len(W)):
                y[o] += w * B[o][i] * a[i]
        out.append(y)
    return torch.tensor(out)


@pytest.mark.parametrize("kw", [
    {"r": 4, "top_k": 2, "temperature": 1.0},
    {"r": 6, "top_k": 3, "temperature": 0.25, "threshold": 0.1},
    {"r": 3, "top_k": 3, "temperature": 2.0},
    {"r": 5, "top_k": 1, "temperature": 0.5},
])
def test_routing_matches_the_hand_computed_formula(kw):
    am, model, delta = _mora(kw)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    base = model.proj.base_layer
    expected = _reference(x, base.weight.tolist(), base.bias.tolist(), delta.A.tolist(), delta.B.tolist(),
                          kw["top_k"], kw["temperature"], kw.get("threshold"))
    with torch.no_grad():
        torch.testing.assert_close(am(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(am(x.view(7, 1, 5)).view(7, 3), expected, atol=1e-5, rtol=1e-5)  # any leading dims


def test_a_two_expert_example_by_hand():
    """A = I (2 experts reading x1, x2), B = [[1, 10]], τ = 1, k = 1, x = (3, 4): s = (0.6, 0.8), expert 2
    wins alone (weight 1), so Δy = 10 · a_2 = 40; with k = 2 the weights are softmax(0.6, 0.8)."""
    am, model, delta = _mora({"r": 2, "top_k": 1}, d_in=2, d_out=1)
    with torch.no_grad():
        delta.A.copy_(torch.eye(2))
        delta.B.copy_(torch.tensor([[1.0, 10.0]]))
        model.proj.base_layer.weight.zero_()
        model.proj.base_layer.bias.zero_()
        x = torch.tensor([[3.0, 4.0]])
        assert am(x).item() == pytest.approx(40.0)
        delta.k = 2
        w1, w2 = math.exp(0.6) / (math.exp(0.6) + math.exp(0.8)), math.exp(0.8) / (math.exp(0.6) + math.exp(0.8))
        assert am(x).item() == pytest.approx(w1 * 1 * 3 + w2 * 10 * 4)


@pytest.mark.parametrize("r,k", [(8, 1), (8, 3), (4, 4)])
def test_the_top_k_budget_is_respected(r, k):
    _, _, delta = _mora({"r": r, "top_k": k}, d_in=16, d_out=4)
    a = torch.randn(3, 11, r)
    gates = delta.gates(a)
    assert ((gates != 0).sum(-1) == k).all()  # exactly k experts per token: softmax weights are positive
    torch.testing.assert_close(gates.sum(-1), torch.ones(3, 11))
    s = a / a.norm(dim=-1, keepdim=True)
    kth = s.topk(k, dim=-1).values[..., -1:]
    assert ((gates != 0) == (s >= kth)).all()  # the chosen ones are the k highest signed scores
    # experts outside the budget do not touch the output: zeroing their B columns changes nothing
    x = torch.randn(1, 16)
    with torch.no_grad():
        a = x @ delta.A.t()
        unused = delta.gates(a)[0] == 0
        before = torch.nn.functional.linear(delta.gates(a) * a, delta.B)
        delta.B[:, unused] = 0
        torch.testing.assert_close(torch.nn.functional.linear(delta.gates(a) * a, delta.B), before)


def test_threshold_prunes_weak_experts():
    _, _, delta = _mora({"r": 8, "top_k": 4, "threshold": 0.3}, d_in=16)
    a = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    s = a / a.norm(dim=-1, keepdim=True)
    gates = delta.gates(a)
    assert ((gates != 0).sum(-1) <= 4).all()
    assert (gates[s < 0.3] == 0).all() and (gates[(gates != 0)] > 0).all()
    assert (gates != 0).sum() < 4 * 200  # some tokens did lose experts
    assert gates.sum(-1).max() <= 1 + 1e-6  # pruning removes weight, it does not renormalise


def test_identity_at_init_and_gradients_reach_both_factors():
    base = tiny_bert()
    batch = tiny_batch(base)
    with torch.no_grad():
        y0 = base(**batch).logits
    am = petkit.adapt(base, MoraConfig(r=4, top_k=2, targets=["attn.q", "attn.v"], train_head=False))
    with torch.no_grad():
        assert torch.equal(am(**batch).logits, y0)
    deltas = [d for _, _, d in am.layers("default")]
    assert all(torch.count_nonzero(d.B) == 0 and torch.count_nonzero(d.A) == d.A.numel() for d in deltas)
    am(**batch).loss.backward()
    assert all(d.B.grad.abs().sum() > 0 for d in deltas)
    with torch.no_grad():
        for d in deltas:
            d.B.normal_()
    am.zero_grad()
    am(**batch).loss.backward()
    assert all(d.A.grad.abs().sum() > 0 for d in deltas)


@pytest.mark.parametrize("k", [2, 4])
def test_never_mergeable_even_with_every_expert_active(k):
    """With top_k = r every expert is used, but the softmax weights still depend on x: no single ΔW."""
    am = petkit.adapt(tiny_gpt2(), MoraConfig(r=4, top_k=k, targets=["attn.qkv"]))
    with pytest.raises(petkit.StateError, match="cannot be merged"):
        am.merge()
    delta = next(d for _, _, d in am.layers("default"))
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    g = delta.gates(a)
    assert not torch.allclose(g[0], g[1])  # each token mixes the experts with its own weights


def test_trainable_and_active_parameter_counts():
    am = petkit.adapt(tiny_bert(), MoraConfig(r=6, top_k=2, targets=["attn.q", "mlp.in"], train_head=False))
    # attn.q 32 → 32 and mlp.in 32 → 64, in 2 layers
    assert am.num_parameters("default") == 2 * 6 * ((32 + 32) + (32 + 64))
    assert active_parameters(am, "default") == 2 * 2 * ((32 + 32) + (32 + 64))


@pytest.mark.parametrize("kwargs,match", [
    ({"r": 4, "top_k": 5}, r"top_k must be at most r \(the number of experts\), got top_k=5 > r=4"),
    ({"top_k": 0}, "top_k must be a positive int"),
    ({"r": 0}, "r must be a positive int"),
    ({"temperature": 0}, "temperature must be a positive number, got 0"),
    ({"temperature": -1.0}, "temperature must be a positive number"),
    ({"temperature": math.inf}, "temperature must be a positive number"),
    ({"threshold": 1.5}, r"threshold must be None \(no pruning\) or a number in \[-1, 1\]"),
    ({"threshold": "high"}, "threshold must be None"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(petkit.ConfigError, match=match):
        MoraConfig(**kwargs)
