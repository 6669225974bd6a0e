"""SaRA: the smallest weights as sparse values, the nuclear-norm term, progressive reselection."""

from __future__ import annotations

import copy
import random

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

# λ of the size of the task gradient of layer 0's query in the tiny BERT (about 1e-7 per value): a
# term counted k times, or divided by a loss scale, then changes the update's direction, so even
# AdamW's (nearly scale-free) first steps show it
LAM = 3e-7


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-4)


def _sara(rank_weight: float = LAM, official: bool = False, **config):
    """Tiny BERT (no dropout: passes are repeatable) with SaRA on layer 0's query, its values set."""
    settings = dict(ratio=0.3, rank_weight=rank_weight, rank_min_dim=0, official=official, targets=ONLY_Q,
                    train_head=False)
    am = petkit.adapt(tiny_bert(dropout=0.0), SaraConfig(**{**settings, **config}))
    d = am.layer(Q).deltas["default"]
    with torch.no_grad():
        d.values.copy_(torch.randn(d.values.shape, generator=torch.Generator().manual_seed(3)) * 0.01)
    am.train()
    return am, d


def _nuclear_grad(am, d, lam: float = LAM) -> torch.Tensor:
    """λ ∂‖P‖_*/∂values = λ (U Vᵀ)[M], P = W ⊙ M with the current values, from scratch."""
    P = torch.zeros(32 * 32)
    P[d.index] = am.layer(Q).base_layer.weight.detach().reshape(-1)[d.index] + d.values.detach()
    U, _, Vh = torch.linalg.svd(P.view(32, 32))
    return lam * (U @ Vh).reshape(-1)[d.index]


def test_nuclear_norm_gradient_is_added_once_per_step_not_in_backward():
    am, d = _sara()
    batch = tiny_batch(am)
    am(**batch).loss.backward()
    task = d.values.grad.clone()
    plain, p = _sara(rank_weight=0.0)
    plain(**batch).loss.backward()
    torch.testing.assert_close(task, p.values.grad)  # the backward pass is the task's alone
    am.before_optimizer_step()
    _close(d.values.grad - task, _nuclear_grad(am, d))
    assert (d.values.grad - task).abs().max() > task.abs().max() / 10  # the two are of a size
    # a value that got no task gradient (its grad is None) gets the term alone
    d.values.grad = None
    assert sara.nuclear_step(am) == Q
    _close(d.values.grad, _nuclear_grad(am, d))
    # an adapter that is not being trained (frozen, or merged) gets no term
    grad = d.values.grad.clone()
    am.set_trainable("default", False)
    am.before_optimizer_step()
    assert torch.equal(d.values.grad, grad)


def test_entries_frozen_by_reselect_are_outside_the_nuclear_term():
    am, d = _sara()
    with torch.no_grad():
        d.values[::2] = 1.0  # these grow past the threshold and freeze
    sara.reselect(am)
    assert d.active.any() and not d.active.all()
    d.values.grad = None
    sara.nuclear_step(am)
    assert torch.all(d.values.grad[~d.active] == 0)
    P = torch.zeros(32 * 32)  # P = W ⊙ M₂: the still-training entries only
    w = am.layer(Q).base_layer.weight.detach().reshape(-1)[d.index] + d.values.detach()
    P[d.index[d.active]] = w[d.active]
    U, _, Vh = torch.linalg.svd(P.view(32, 32))
    _close(d.values.grad[d.active], LAM * (U @ Vh).reshape(-1)[d.index[d.active]])


SGD_LR = 1e4  # gradients near 1e-7: a step of 1e-3 next to values near 1e-2 keeps float32's precision


def _sgd_update(k: int = 1, loss_scale: float | None = None) -> torch.Tensor:
    """One optimizer step of a plain PyTorch loop over 8 examples in k micro-batches, the loss scaled by
    a GradScaler (init_scale = loss_scale) when given; returns the change of the values."""
    am, d = _sara()
    batch = tiny_batch(am, batch_size=8)
    optimizer = torch.optim.SGD([d.values], lr=SGD_LR)
    am.hook_optimizer(optimizer)  # what a user's own loop does once
    scaler = torch.amp.GradScaler("cpu", init_scale=loss_scale) if loss_scale else None
    before = d.values.detach().clone()
    for part in range(k):
        loss = am(**{key: v[part * 8 // k:(part + 1) * 8 // k] for key, v in batch.items()}).loss / k
        (scaler.scale(loss) if scaler else loss).backward()
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return d.values.detach() - before


def test_accumulation_gives_the_update_of_one_big_batch_in_a_plain_loop():
    one, four = _sgd_update(k=1), _sgd_update(k=4)
    _close(four, one)


def test_a_loss_scale_leaves_the_nuclear_term_unchanged():
    plain, scaled = _sgd_update(), _sgd_update(loss_scale=2.0 ** 12)
    _close(scaled, plain)
    # and the term is really in it: without it the update differs by lr · λ (U Vᵀ)[M]
    am, d = _sara()
    _close(plain - _no_term_update(), -SGD_LR * _nuclear_grad(am, d))


def _no_term_update() -> torch.Tensor:
    am, d = _sara(rank_weight=0.0)
    optimizer = torch.optim.SGD([d.values], lr=SGD_LR)
    before = d.values.detach().clone()
    am(**tiny_batch(am, batch_size=8)).loss.backward()
    optimizer.step()
    return d.values.detach() - before


def test_petkit_trainer_applies_the_term_once_per_step_under_accumulation():
    from petkit.data import ClassificationDataset
    from petkit.testing import tiny_tokenizer
    from petkit.train import TrainConfig, train

    texts = [{"text": "abcdefgh"[i % 5:] + "xyz"[: i % 3], "label": i % 3} for i in range(16)]
    data = ClassificationDataset(tiny_tokenizer(), texts, max_length=16)
    updates = {}
    for batch_size, accum, lam in ((8, 1, LAM), (2, 4, LAM), (8, 1, 0.0)):
        am, d = _sara(rank_weight=lam)
        before = d.values.detach().clone()
        train(am, data, TrainConfig(lr=1e-3, max_steps=2, batch_size=batch_size, grad_accum=accum), progress=False)
        updates[accum, lam] = d.values.detach() - before
    _close(updates[4, LAM], updates[1, LAM])
    # the trainer does add the term: without it the update is another one
    assert (updates[1, LAM] - updates[1, 0.0]).abs().max() > 0.1 * updates[1, 0.0].abs().max()


def test_official_flag_reproduces_the_no_effect_term_and_the_abs_init():
    am, d = _sara(official=True)
    am(**tiny_batch(am)).loss.backward()
    task = d.values.grad.clone()
    am.before_optimizer_step()
    assert not d.nuclear and torch.equal(d.values.grad, task)  # the official term never reaches the values
    fresh = petkit.adapt(tiny_bert(), SaraConfig(ratio=0.3, official=True, targets=["query"]))
    d = fresh.layer(Q).deltas["default"]
    w = fresh.layer(Q).base_layer.weight.detach().reshape(-1)[d.index]
    torch.testing.assert_close(w + d.values.detach(), w.abs())  # |w| written into the selected entries
    assert (w < 0).any()


def test_only_large_matrices_get_the_term_and_exactly_one_per_step():
    am = petkit.adapt(tiny_bert(), SaraConfig(ratio=0.1, rank_min_dim=32))  # every matrix has a side of 32
    assert not any(d.nuclear for _, _, d in am.layers("default") if isinstance(d, sara.SaraDelta))
    assert sara.nuclear_step(am) is None
    am = petkit.adapt(tiny_bert(dropout=0.0), SaraConfig(ratio=0.1, rank_min_dim=0, targets=["query", "value"],
                                                        train_head=False))
    deltas = {p: d for p, _, d in am.layers("default")}
    assert len(deltas) == 4 and all(d.nuclear for d in deltas.values())
    am.train()
    am(**tiny_batch(am)).loss.backward()
    random.seed(0)
    picked = []
    for _ in range(40):
        grads = {p: d.values.grad.clone() for p, d in deltas.items()}
        picked.append(sara.nuclear_step(am))
        assert [p for p, d in deltas.items() if not torch.equal(d.values.grad, grads[p])] == picked[-1:]
    assert set(picked) == set(deltas)  # uniformly at random: each is picked sometimes


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
