"""SaRA: the smallest weights as sparse values, the nuclear-norm term, progressive reselection."""

from __future__ import annotations

import copy

import pytest
import torch

import petkit
from petkit.core.layer import weight_oi
from petkit.methods import sara
from petkit.methods.sara import SaraConfig
from petkit.testing import tiny_batch, tiny_bert, tiny_gpt2

Q = "bert.encoder.layer.0.attention.self.query"
ONLY_Q = ["re:.*layer\\.0\\.attention\\.self\\.query"]  # one matrix: layer 0's query


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_selects_the_entries_below_the_threshold_and_starts_at_the_base():
    model = tiny_bert()
    batch = tiny_batch(model)
    y0 = _logits(model, batch)
    W = model.get_submodule(Q).weight.detach().clone()
    am = petkit.adapt(model, SaraConfig(threshold=3e-3, targets=ONLY_Q, train_head=False))
    d = am.layer(Q).deltas["default"]
    assert torch.equal(d.index, torch.nonzero(W.reshape(-1).abs() < 3e-3).squeeze(1))
    assert d.index.numel() > 0 and torch.all(d.values == 0)
    assert sum(p.numel() for p in am.trainable_parameters()) == int((W.abs() < 3e-3).sum())
    torch.testing.assert_close(_logits(am, batch), y0)


def test_ratio_selects_the_smallest_fraction_also_on_conv1d():
    model = tiny_gpt2()
    path = "transformer.h.0.attn.c_attn"
    W = weight_oi(model.get_submodule(path)).detach().clone()  # (out, in) view of the (in, out) Conv1D
    am = petkit.adapt(model, SaraConfig(ratio=0.1, targets=["attn.qkv"]))
    d = am.layer(path).deltas["default"]
    k = round(0.1 * W.numel())
    assert d.index.numel() == k
    chosen = W.reshape(-1).abs()[d.index]
    rest = torch.ones(W.numel(), dtype=torch.bool)
    rest[d.index] = False
    assert chosen.max() <= W.reshape(-1).abs()[rest].min()
    assert d.threshold > chosen.max()  # reselection keeps every entry that has not moved


def test_sparse_gradients_equal_the_dense_gradients_at_the_selected_entries():
    model = tiny_bert()
    batch = tiny_batch(model)
    twin = copy.deepcopy(model)
    am = petkit.adapt(model, SaraConfig(ratio=0.2, rank_weight=0.0, targets="all-linear", train_head=False))
    paths = [p for p, _, _ in am.layers("default")]
    for p in twin.parameters():
        p.requires_grad_(False)
    for p in paths:
        twin.get_submodule(p).weight.requires_grad_(True)
    am.train(), twin.train()
    torch.manual_seed(0)
    am(**batch).loss.backward()
    torch.manual_seed(0)
    twin(**batch).loss.backward()
    for p, layer, d in am.layers("default"):
        assert layer.base_layer.weight.grad is None  # the frozen weight never gets a dense gradient
        assert d.values.grad.shape == d.values.shape
        dense = twin.get_submodule(p).weight.grad
        torch.testing.assert_close(d.values.grad, dense.reshape(-1)[d.index], atol=1e-6, rtol=1e-5)


def test_delta_weight_and_merge_are_exact():
    model = tiny_bert()
    batch = tiny_batch(model)
    am = petkit.adapt(model, SaraConfig(ratio=0.1))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    layer = am.layer(Q)
    d, base = layer.deltas["default"], layer.base_layer
    dense = torch.zeros(32 * 32)
    dense[d.index] = d.values.detach()
    x = torch.randn(3, 32)
    torch.testing.assert_close(layer(x), x @ (base.weight + dense.view(32, 32)).t() + base.bias)
    y = _logits(am, batch)
    am.merge()
    torch.testing.assert_close(_logits(am, batch), y, atol=1e-5, rtol=1e-5)
    am.unmerge()


# -- the nuclear-norm term -------------------------------------------------------------------------

def _grad(official: bool, rank_weight: float, seed_values=True):
    model = tiny_bert()
    batch = tiny_batch(model)
    am = petkit.adapt(model, SaraConfig(ratio=0.3, rank_weight=rank_weight, rank_min_dim=0, official=official,
                                        targets=ONLY_Q, train_head=False))
    d = am.layer(Q).deltas["default"]
    if seed_values:
        with torch.no_grad():
            d.values.copy_(torch.randn(d.values.shape, generator=torch.Generator().manual_seed(3)) * 0.01)
    am.train()
    torch.manual_seed(0)
    am(**batch).loss.backward()
    return am, d


def test_nuclear_norm_gradient_reaches_the_trained_values():
    lam = 0.05
    _, plain = _grad(False, 0.0)
    am, d = _grad(False, lam)  # one eligible layer: it is picked every step
    base = am.layer(Q).base_layer
    P = torch.zeros(32 * 32)
    P[d.index] = base.weight.detach().reshape(-1)[d.index] + d.values.detach()  # W ⊙ M, current values
    U, _, Vh = torch.linalg.svd(P.view(32, 32))
    torch.testing.assert_close(d.values.grad - plain.values.grad, lam * (U @ Vh).reshape(-1)[d.index],
                               atol=1e-6, rtol=1e-4)
    # and one optimizer step moves the values differently than without the term
    for delta in (plain, d):
        torch.optim.SGD([delta.values], lr=1.0).step()
    assert not torch.allclose(d.values, plain.values)


def test_official_flag_reproduces_the_no_effect_term_and_the_abs_init():
    _, plain = _grad(False, 0.0)
    _, off = _grad(True, 0.05)
    torch.testing.assert_close(off.values.grad, plain.values.grad)  # the official term never reaches the values
    fresh = petkit.adapt(tiny_bert(), SaraConfig(ratio=0.3, official=True, targets=["query"]))
    d = fresh.layer(Q).deltas["default"]
    w = fresh.layer(Q).base_layer.weight.detach().reshape(-1)[d.index]
    torch.testing.assert_close(w + d.values.detach(), w.abs())  # |w| written into the selected entries
    assert (w < 0).any()


def test_only_large_matrices_get_the_term_and_one_per_step_in_expectation():
    am = petkit.adapt(tiny_bert(), SaraConfig(ratio=0.1, rank_min_dim=32))  # every matrix has a side of 32
    assert all(d.pick == 0 for _, _, d in am.layers("default") if isinstance(d, sara.SaraDelta))
    am = petkit.adapt(tiny_bert(), SaraConfig(ratio=0.1, rank_min_dim=0, targets=["query", "value"]))
    assert [d.pick for _, _, d in am.layers("default") if isinstance(d, sara.SaraDelta)] == [0.25] * 4


# -- progressive reselection -----------------------------------------------------------------------

def test_reselect_freezes_the_entries_that_grew(tmp_path):
    model = tiny_bert()
    batch = tiny_batch(model)
    am = petkit.adapt(model, SaraConfig(threshold=4e-3, rank_weight=0.0, targets=ONLY_Q, train_head=False))
    d = am.layer(Q).deltas["default"]
    base_w = am.layer(Q).base_layer.weight.detach().reshape(-1)[d.index]
    n = d.index.numel()
    with torch.no_grad():
        d.values.zero_()
        d.values[: n // 2] = 0.01  # these now have |w| >= threshold
    grown = (base_w + d.values.detach()).abs() >= 4e-3
    still = sara.reselect(am)
    assert still == int((~grown).sum()) and still < n
    assert torch.equal(d.active, ~grown)
    torch.testing.assert_close(d.frozen[grown], d.values.detach()[grown])
    y = _logits(am, batch)
    # frozen entries: zero gradient, and the forward ignores later changes of their values
    am.train()
    am(**batch).loss.backward()
    assert torch.all(d.values.grad[grown] == 0) and d.values.grad[~grown].abs().sum() > 0
    am.eval()
    with torch.no_grad():
        d.values[grown] += 1.0
    torch.testing.assert_close(_logits(am, batch), y)
    # the state survives save -> load, and merging stays exact
    am.save(tmp_path / "s")
    loaded = petkit.load(tiny_bert(), tmp_path / "s")
    torch.testing.assert_close(_logits(loaded, batch), y, atol=1e-6, rtol=1e-6)
    assert torch.equal(loaded.layer(Q).deltas["default"].active, d.active)
    am.merge()
    torch.testing.assert_close(_logits(am, batch), y, atol=1e-5, rtol=1e-5)
    with pytest.raises(petkit.StateError, match="unmerge"):
        sara.reselect(am)


def test_schedule_calls_reselect_at_its_step():
    from petkit.train.loop import StepInfo

    am = petkit.adapt(tiny_bert(), SaraConfig(threshold=4e-3, targets=["query"]))
    d = am.layer(Q).deltas["default"]
    with torch.no_grad():
        d.values.fill_(0.01)
    hook = sara.schedule(am, at=3)
    hook(StepInfo(2, 0, 1.0, 1e-3))
    assert d.active.all()
    hook(StepInfo(3, 0, 1.0, 1e-3))
    assert not d.active.any()


def test_reselect_needs_a_sara_adapter():
    am = petkit.adapt(tiny_bert(), petkit.LoraConfig(targets=["query"]))
    with pytest.raises(petkit.ConfigError, match="needs a SaRA one"):
        sara.reselect(am)
    with pytest.raises(petkit.ConfigError, match="no adapter named"):
        sara.reselect(am, "other")


@pytest.mark.parametrize("kwargs,match", [
    ({"ratio": 1.0}, "ratio must be a fraction in"), ({"ratio": -0.1}, "ratio must be a fraction in"),
    ({"ratio": 1.5}, "ratio must be"), ({"threshold": 0}, "threshold must be a positive"),
    ({"rank_weight": -1}, "rank_weight"), ({"rank_min_dim": -1}, "rank_min_dim"), ({"official": 1}, "official"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(petkit.ConfigError, match=match):
        SaraConfig(**kwargs)
