"""APET: a reference method's parameter budget at random elements or whole tensors."""

from __future__ import annotations

import copy

import pytest
import torch

import petkit
from petkit.methods.apet import (
    ApetConfig,
    TensorDelta,
    greedy_tensors,
    sample_positions,
)
from petkit.kernels.sparse import SparseDelta
from petkit.testing import tiny_batch, tiny_bert, tiny_llama, tiny_t5

LORA_QV = {"method": "lora", "r": 8, "targets": ["attn.q", "attn.v"]}


def _own(am):
    return sum(p.numel() for p in am.trainable_parameters()) - (am.num_parameters("default") - am.num_parameters("default", include_head=False))


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama, tiny_t5])
def test_element_budget_equals_the_reference_count_exactly(make):
    model = make()
    lora = petkit.adapt(copy.deepcopy(model), petkit.LoraConfig(r=8, targets=["attn.q", "attn.v"]))
    am = petkit.adapt(model, ApetConfig(reference=LORA_QV))
    assert _own(am) == lora.num_parameters("default", include_head=False)
    # spread over all linear layers, at distinct in-range positions
    deltas = [(layer.base_layer, d) for _, layer, d in am.layers("default") if isinstance(d, SparseDelta)]
    assert sum(d.index.numel() > 0 for _, d in deltas) > 4
    for base, d in deltas:
        assert d.index.unique().numel() == d.index.numel()
        assert d.index.numel() == 0 or d.index[-1] < base.weight.numel()


def test_default_budget_is_lora_r8_on_q_and_v():
    model = tiny_bert()
    lora = petkit.adapt(copy.deepcopy(model), petkit.LoraConfig(r=8, targets=["attn.q", "attn.v"]))
    assert _own(petkit.adapt(model, ApetConfig())) == lora.num_parameters("default", include_head=False)


def test_placement_is_seeded_and_deterministic():
    def support(seed):
        am = petkit.adapt(tiny_bert(), ApetConfig(budget=300, seed=seed))
        return [d.index.clone() for _, _, d in am.layers("default") if isinstance(d, SparseDelta)]

    a, b, c = support(0), support(0), support(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, c))


def test_element_level_is_a_sparse_delta_against_the_dense_formula():
    model = tiny_bert()
    batch = tiny_batch(model)
    y0 = _logits(model, batch)
    am = petkit.adapt(model, ApetConfig(budget=500, seed=2))
    torch.testing.assert_close(_logits(am, batch), y0)  # values start at 0
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    layer, d = next((la, d) for _, la, d in am.layers("default") if isinstance(d, SparseDelta)
                          and d.index.numel())
    W = layer.base_layer.weight.detach()
    dense = torch.zeros(W.numel())
    dense[d.index] = d.values.detach()
    x = torch.randn(2, W.shape[1])
    torch.testing.assert_close(layer(x), x @ (W + dense.view(W.shape)).t() + layer.base_layer.bias)
    y = _logits(am, batch)
    am.merge()
    torch.testing.assert_close(_logits(am, batch), y, atol=1e-5, rtol=1e-5)


def test_tensor_level_follows_the_greedy_rule():
    model = tiny_bert()
    am = petkit.adapt(model, ApetConfig(level="tensor", budget=5000, seed=4, train_head=False))
    chosen, left_out = [], []
    for _, layer, d in am.layers("default"):
        assert isinstance(d, TensorDelta)
        for name in ("weight", "bias"):
            size = getattr(layer.base_layer, name).numel()
            (chosen if getattr(d, name) is not None else left_out).append(size)
    count = sum(chosen)
    assert count == sum(p.numel() for p in am.trainable_parameters())
    assert count <= 5000 and all(size > 5000 - count for size in left_out)  # within one tensor of the budget
    again = petkit.adapt(tiny_bert(), ApetConfig(level="tensor", budget=5000, seed=4, train_head=False))
    assert sum(p.numel() for p in again.trainable_parameters()) == count


def test_greedy_tensors_rule():
    sizes = [10, 300, 7, 50, 50, 1000, 3]
    for seed in range(5):
        chosen = greedy_tensors(sizes, 120, seed)
        count = sum(sizes[i] for i in chosen)
        assert count <= 120 and all(sizes[i] > 120 - count for i in range(len(sizes)) if i not in chosen)


def test_tensor_level_forward_and_merge():
    model = tiny_bert()
    batch = tiny_batch(model)
    am = petkit.adapt(model, ApetConfig(level="tensor", budget=2 * (32 * 32 + 32), targets=["attn.out"]))  # every tensor
    path = "bert.encoder.layer.0.attention.output.dense"
    layer = am.layer(path)
    d = layer.deltas["default"]
    with torch.no_grad():
        d.weight.normal_(std=0.1)
        d.bias.normal_(std=0.1)
    x = torch.randn(3, 32)
    base = layer.base_layer
    torch.testing.assert_close(layer(x), x @ (base.weight + d.weight).t() + base.bias + d.bias)
    torch.testing.assert_close(d(base, x, base(x)), layer(x))
    y = _logits(am, batch)
    w0 = base.weight.detach().clone()
    am.merge()
    torch.testing.assert_close(_logits(am, batch), y, atol=1e-5, rtol=1e-5)
    am.unmerge()
    torch.testing.assert_close(base.weight, w0)


def test_bias_only_and_empty_tensor_deltas():
    base = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    empty = TensorDelta(base, False, False)
    assert not empty.fused and list(empty.parameters()) == []
    torch.testing.assert_close(empty(base, x, base(x)), base(x))
    bias_only = TensorDelta(base, False, True)
    with torch.no_grad():
        bias_only.bias.fill_(1.0)
    torch.testing.assert_close(bias_only(base, x, base(x)), base(x) + 1.0)
    assert bias_only.delta_weight(base) is None


@pytest.mark.parametrize("level", ["element", "tensor"])
def test_save_load_roundtrip(level, tmp_path):
    model = tiny_bert()
    batch = tiny_batch(model)
    am = petkit.adapt(model, ApetConfig(level=level, reference=LORA_QV, seed=3))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    y = _logits(am, batch)
    am.save(tmp_path / "a")
    loaded = petkit.load(tiny_bert(), tmp_path / "a")
    torch.testing.assert_close(_logits(loaded, batch), y, atol=1e-6, rtol=1e-6)


def test_sample_positions_small_and_large_fractions():
    g = torch.Generator().manual_seed(0)
    for n, k in ((10**7, 1000), (100, 90), (50, 0)):
        pos = sample_positions(n, k, g)
        assert pos.numel() == k and pos.unique().numel() == k and (k == 0 or (pos.min() >= 0 and pos.max() < n))


def test_budget_larger_than_the_model():
    with pytest.raises(petkit.TargetError, match="larger than the"):
        petkit.adapt(tiny_bert(), ApetConfig(budget=10**7))
    with pytest.raises(petkit.TargetError, match="larger than the"):
        petkit.adapt(tiny_bert(), ApetConfig(level="tensor", budget=10**7))
    # a reference that is larger than what the targets hold
    with pytest.raises(petkit.TargetError, match="larger than the"):
        petkit.adapt(tiny_bert(), ApetConfig(reference={"method": "lora", "r": 8, "targets": "all-linear"},
                                             targets=["attn.q"]))


@pytest.mark.parametrize("kwargs,match", [
    ({"budget": 10, "reference": LORA_QV}, "not both"),
    ({"budget": -5}, "budget must be"), ({"budget": 2.5}, "budget must be"),
    ({"level": "row", "budget": 10}, "level must be"),
    ({"reference": {"method": "apet", "budget": 3}}, "reference must be a weight or output method"),
    ({"reference": {"method": "full"}}, "reference must be a weight or output method"),
    ({"reference": {"method": "nope"}}, "unknown method"),
    ({"reference": {"method": "lora", "r": 0}}, "r must be"),
    ({"reference": [1]}, "reference must be a method config dict"),
    ({"budget": 10, "seed": -1}, "seed must be"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(petkit.ConfigError, match=match):
        ApetConfig(**kwargs)
