"""SHERL beyond the generic matrix: the aggregation against a token-by-token hand computation, where
gradients go, what is kept for backward, bad input."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.testing import TINY_MODELS, saved_for_backward_bytes, tiny_batch


def adapted(family, layers=None, **kw):
    base = TINY_MODELS[family](seed=0, **({"layers": layers} if layers else {}))
    return petkit.adapt(base, petkit.SherlConfig(**kw)), tiny_batch(base, seed=1)


def aggregate_by_hand(delta, features, b, t, redundancy_divisor=True):
    """The spec's formula for one token (f̃_j = LN(W_j f_j), g the deepest tier):
    R_j = Σ_k ReLU(cos(f̃_j, f̃_k)) over the shallow tiers, a_j = ReLU(w·(f̃_j ⊙ g) + b) / R_j, a ← a / Σ a,
    z = Σ a_j f̃_j + g, out = LN(W_up ReLU(z)) + tanh(β / T) · f_J (dropout off)."""
    f = [tier(x[b, t]) for tier, x in zip(delta.tiers, features)]
    shallow, guide = f[:-1], f[-1]
    redundancy = [sum(torch.relu(torch.cosine_similarity(s, o, dim=0)) for o in shallow) for s in shallow]
    if not redundancy_divisor:
        redundancy = [1.0] * len(shallow)
    a = [torch.relu(delta.attend(s * guide))[0] / r for s, r in zip(shallow, redundancy)]
    a = [x / (sum(abs(y) for y in a) + 1e-8) for x in a]
    z = sum(x * s for x, s in zip(a, shallow)) + guide
    return delta.out(z) + torch.tanh(delta.beta / delta.temperature)[0] * features[-1][b, t]


def test_aggregation_equals_a_token_by_token_hand_computation():
    am, _ = adapted("bert", dropout=0.0)
    delta = am.model_deltas["default"]
    with torch.no_grad():
        delta.beta.fill_(0.05)
    torch.manual_seed(0)
    features = [torch.randn(2, 3, 32) for _ in range(2)]  # tiny BERT, K = 1: tiers f_0 (embeddings) and f_1
    with torch.no_grad():
        mine = delta.aggregate(features)
        for b in range(2):
            for t in range(3):
                torch.testing.assert_close(mine[b, t], aggregate_by_hand(delta, features, b, t), atol=1e-5, rtol=1e-5)


def test_anti_redundancy_weights_over_five_tiers_follow_the_spec():
    """With one shallow tier (the 2-layer model) a ← a / Σ a cancels R_j; with four it does not.
    The tiers share a component of different strength, so their redundancies differ."""
    am, _ = adapted("bert", layers=5, dropout=0.0)
    delta = am.model_deltas["default"]
    assert len(delta.tiers) == 5  # f_0 (embeddings), outputs of layers 0-2, and f_4 (layer 4's input)
    torch.manual_seed(0)
    common = torch.randn(2, 3, 32)
    features = [common * w + torch.randn(2, 3, 32) for w in (0.0, 0.5, 1.5, 3.0, 1.0)]
    with torch.no_grad():
        delta.beta.fill_(0.05)
        delta.attend.bias.fill_(1.0)  # most a_j > 0: every tier's weight is in play
        mine = delta.aggregate(features)
        for b in range(2):
            for t in range(3):
                expected = aggregate_by_hand(delta, features, b, t)
                torch.testing.assert_close(mine[b, t], expected, atol=1e-5, rtol=1e-5)
                without = aggregate_by_hand(delta, features, b, t, redundancy_divisor=False)
                assert (without - expected).abs().max() > 1e-3  # the test can tell R_j from R_j = 1


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_gradients_reach_the_early_route_through_the_frozen_late_layer_only(family):
    am, batch = adapted(family, dropout=0.0)
    am.train()
    sherl = saved_for_backward_bytes(am, batch)
    delta = am.model_deltas["default"]
    assert all(p.grad is not None for p in delta.parameters())
    assert all(p.grad is None for p in am.base.parameters() if not p.requires_grad)
    lora = petkit.adapt(TINY_MODELS[family](seed=0), petkit.LoraConfig(r=2, targets="all-linear"))
    lora.train()
    assert sherl < saved_for_backward_bytes(lora, batch)


def test_the_late_layer_reads_the_aggregate():
    am, batch = adapted("bert", dropout=0.0)
    seen = []
    layer = am.base.bert.encoder.layer[1]
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    with torch.no_grad():
        am(**batch)
        with am.disabled():
            am(**batch)
    handle.remove()
    assert not torch.allclose(seen[0], seen[1])  # the adapter's hook ran first and replaced the input
    assert "aggregate of 2 frozen tiers feeds the last 1 layer(s)" in am.summary(print_it=False)


# -- bad input --------------------------------------------------------------------------------------

def test_late_layers_leaving_no_early_layer_are_refused():
    with pytest.raises(petkit.ConfigError, match="late_layers=2 leaves no early layer.*use late_layers <= 1"):
        adapted("bert", late_layers=2)


def test_a_downsample_that_does_not_divide_is_refused():
    with pytest.raises(petkit.ConfigError, match="downsample=3 does not divide the hidden size 32"):
        adapted("bert", downsample=3)


def test_two_stacks_are_refused():
    with pytest.raises(petkit.TargetError, match="SHERL needs one stack.*T5ForConditionalGeneration has 2"):
        adapted("t5")


@pytest.mark.parametrize("kw,message", [
    ({"late_layers": 0}, "late_layers must be a positive integer"),
    ({"downsample": 0}, "downsample must be a positive integer"),
    ({"gate_temperature": -1}, "gate_temperature must be > 0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_bad_configs(kw, message):
    with pytest.raises(petkit.ConfigError, match=message):
        petkit.SherlConfig(**kw)
