"""DSEE: low-rank + sparse update, its sparse support, and stage-2 pruning."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.core.layer import weight_oi
from petkit.methods import dsee
from petkit.methods.dsee import DseeConfig, choose_support, grebsmo
from petkit.testing import tiny_batch, tiny_bert, tiny_llama

Q = "bert.encoder.layer.0.attention.self.query"
V = "bert.encoder.layer.0.attention.self.value"


def _randomise(am, seed=0):
    """Non-zero B and sparse values, so ΔW really differs from 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_identity_at_init_and_what_trains():
    model = tiny_bert()
    batch = tiny_batch(model)
    y0 = _logits(model, batch)
    am = petkit.adapt(model, DseeConfig(r=4, alpha=8, nnz=6, train_head=False))
    torch.testing.assert_close(_logits(am, batch), y0)
    delta = am.layer(Q).deltas["default"]
    assert torch.all(delta.lora.B == 0) and torch.all(delta.sparse.values == 0)
    assert 0.01 < delta.lora.A.std() < 0.03  # A ~ N(0, 0.02) as in the official code
    names = sorted(n.split("deltas.default.")[1] for n, p in am.named_parameters() if p.requires_grad)
    assert set(names) == {"lora.A", "lora.B", "sparse.values"}
    # per matrix r (d_in + d_out) + nnz, on the 4 query/value projections
    assert sum(p.numel() for p in am.trainable_parameters()) == 4 * (4 * (32 + 32) + 6)


def test_delta_weight_against_the_formula_fused_and_unfused():
    model = tiny_bert()
    am = petkit.adapt(model, DseeConfig(r=4, alpha=8, nnz=6))
    _randomise(am)
    layer = am.layer(Q)
    d, base = layer.deltas["default"], layer.base_layer
    S = torch.zeros(32 * 32)
    S[d.sparse.index] = d.sparse.values.detach()
    dW = 2.0 * (d.lora.B @ d.lora.A + S.view(32, 32))  # alpha / r = 2 on both parts
    torch.testing.assert_close(d.delta_weight(base), dW)
    x = torch.randn(2, 5, 32)
    expected = x @ (base.weight + dW).t() + base.bias
    torch.testing.assert_close(layer(x), expected)  # the fused path (the only live delta)
    torch.testing.assert_close(d(base, x, base(x)), expected, atol=1e-5, rtol=1e-5)


def test_merge_is_exact():
    model = tiny_bert()
    batch = tiny_batch(model)
    am = petkit.adapt(model, DseeConfig(r=2, alpha=4, nnz=10))
    _randomise(am)
    y = _logits(am, batch)
    am.merge()
    torch.testing.assert_close(_logits(am, batch), y, atol=1e-5, rtol=1e-5)


# -- the sparse support ----------------------------------------------------------------------------

def _planted(seed=0):
    """A rank-2 matrix plus 12 planted entries, sized like typical entries of the low-rank part, so
    magnitude alone (omp) cannot find them."""
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(48, 2, generator=g) @ torch.randn(2, 40, generator=g)
    planted = torch.randperm(48 * 40, generator=g)[:12]
    S = torch.zeros(48 * 40)
    S[planted] = 1.5 * torch.sign(torch.randn(12, generator=g))
    return L, S.view(48, 40), planted


def test_grebsmo_recovers_the_planted_sparse_entries():
    L, S, planted = _planted()
    W = L + S
    L_hat, S_hat = grebsmo(W, rank=2, threshold=0.5, generator=torch.Generator().manual_seed(0))
    assert set(torch.topk(S_hat.abs().reshape(-1), 12).indices.tolist()) == set(planted.tolist())
    torch.testing.assert_close(L_hat + S_hat, W, atol=0.5, rtol=0)
    # through the support choice: grebsmo finds them, magnitude pruning does not
    found = choose_support(W, 12, "grebsmo", 0, rank=2, threshold=0.5)
    assert set(found.tolist()) == set(planted.tolist())
    omp = choose_support(W, 12, "omp", 0, rank=2, threshold=0.5)
    assert set(omp.tolist()) == set(torch.topk(W.abs().reshape(-1), 12).indices.tolist())
    assert len(set(omp.tolist()) & set(planted.tolist())) < 12


def test_supports_in_the_adapter():
    W = weight_oi(tiny_bert().get_submodule(Q))
    for support in ("grebsmo", "omp", "random"):
        am = petkit.adapt(tiny_bert(), DseeConfig(nnz=7, support=support, seed=5))
        index = am.layer(Q).deltas["default"].sparse.index
        assert index.numel() == 7 and index.unique().numel() == 7
        again = petkit.adapt(tiny_bert(), DseeConfig(nnz=7, support=support, seed=5))
        assert torch.equal(again.layer(Q).deltas["default"].sparse.index, index)  # deterministic
    omp = petkit.adapt(tiny_bert(), DseeConfig(nnz=7, support="omp")).layer(Q).deltas["default"].sparse.index
    assert set(omp.tolist()) == set(torch.topk(W.abs().reshape(-1), 7).indices.tolist())
    r1 = petkit.adapt(tiny_bert(), DseeConfig(nnz=7, support="random", seed=1)).layer(Q).deltas["default"].sparse.index
    assert not torch.equal(r1, petkit.adapt(tiny_bert(), DseeConfig(nnz=7, support="random", seed=2))
                           .layer(Q).deltas["default"].sparse.index)
    frac = petkit.adapt(tiny_bert(), DseeConfig(nnz=0.1)).layer(Q).deltas["default"].sparse.index
    assert frac.numel() == round(0.1 * 32 * 32)


def test_sparse_values_train_only_at_the_support():
    model = tiny_bert()
    batch = tiny_batch(model)
    am = petkit.adapt(model, DseeConfig(nnz=5))
    am.train()
    am(**batch).loss.backward()
    d = am.layer(Q).deltas["default"]
    assert d.sparse.values.grad.shape == (5,) and d.sparse.values.grad.abs().sum() > 0
    assert am.layer(Q).base_layer.weight.grad is None


@pytest.mark.parametrize("kwargs,match", [
    ({"nnz": 0}, "nnz must be"), ({"nnz": 1.5}, "nnz must be"), ({"nnz": 0.0}, "nnz must be"),
    ({"support": "svd"}, "support must be one of grebsmo, omp, random"), ({"r": 0}, "r must be"),
    ({"alpha": -1}, "alpha must be"), ({"grebsmo_rank": 0}, "grebsmo_rank"), ({"pruned": "rows"}, "pruned must be"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(petkit.ConfigError, match=match):
        DseeConfig(**kwargs)


def test_more_sparse_entries_than_the_matrix_has():
    with pytest.raises(petkit.TargetError, match="nnz=2000 is more than the 1024 entries"):
        petkit.adapt(tiny_bert(), DseeConfig(nnz=2000))


def test_save_load_roundtrip(tmp_path):
    model = tiny_bert()
    batch = tiny_batch(model)
    am = petkit.adapt(model, DseeConfig(nnz=9, support="random"))
    _randomise(am)
    y = _logits(am, batch)
    am.save(tmp_path / "a")
    loaded = petkit.load(tiny_bert(), tmp_path / "a")
    torch.testing.assert_close(_logits(loaded, batch), y, atol=1e-6, rtol=1e-6)
    assert torch.equal(loaded.layer(V).deltas["default"].sparse.index, am.layer(V).deltas["default"].sparse.index)


# -- stage 2: pruning ------------------------------------------------------------------------------

def test_unstructured_pruning_by_delta_magnitude(tmp_path):
    model = tiny_bert()
    batch = tiny_batch(model)
    am = petkit.adapt(model, DseeConfig(r=2, alpha=4, nnz=8))
    _randomise(am)
    layers = {p: (layer.base_layer, d) for p, layer, d in am.layers("default") if p.endswith(("query", "value"))}
    dws = {p: d.delta_weight(b).detach().abs() for p, (b, d) in layers.items()}
    flat = torch.cat([dw.reshape(-1) for dw in dws.values()])
    cut = torch.kthvalue(flat, round(0.3 * flat.numel())).values
    zeros = dsee.prune(am, sparsity=0.3)
    total_zero = sum(int((weight_oi(b) == 0).sum()) for b, _ in layers.values())
    assert total_zero == round(0.3 * flat.numel())  # a global fraction, exactly
    for p, (b, _) in layers.items():
        pruned = weight_oi(b) == 0
        assert torch.all(dws[p][pruned] <= cut) and torch.all(dws[p][~pruned] >= cut)  # the smallest |ΔW| went
        assert zeros[p] == pytest.approx(float(pruned.float().mean()))
    assert am.adapter_config().pruned == "unstructured"
    y = _logits(am, batch)
    # the caveat: merging would densify the pruned weights, so it is refused
    with pytest.raises(petkit.StateError, match="cannot be merged"):
        am.merge()
    assert am.state.merged == []
    # the mask travels with the adapter: loading it prunes a fresh copy of the base the same way
    am.save(tmp_path / "p")
    fresh = tiny_bert()
    loaded = petkit.load(fresh, tmp_path / "p")
    torch.testing.assert_close(_logits(loaded, batch), y, atol=1e-6, rtol=1e-6)
    assert int((weight_oi(fresh.get_submodule(Q).base_layer) == 0).sum()) == int((weight_oi(layers[Q][0]) == 0).sum())


@pytest.mark.parametrize("score", ["delta", "weight", "weight+delta"])
def test_pruning_scores(score):
    am = petkit.adapt(tiny_bert(), DseeConfig(r=2, alpha=4, nnz=4))
    _randomise(am)
    layers = [(layer.base_layer, d) for _, layer, d in am.layers("default") if isinstance(d, dsee.DseeDelta)]
    scores = [(weight_oi(b).detach().abs() if score != "delta" else 0)
              + (d.delta_weight(b).detach().abs() if score != "weight" else 0) for b, d in layers]
    dsee.prune(am, sparsity=0.5, score=score)
    kept = torch.cat([s[weight_oi(b) != 0] for s, (b, _) in zip(scores, layers)])
    cut = torch.cat([s[weight_oi(b) == 0] for s, (b, _) in zip(scores, layers)])
    assert cut.numel() == kept.numel() and kept.min() >= cut.max()  # one global cut over all matrices


def test_pruning_requires_unmerged_weights_and_valid_arguments():
    am = petkit.adapt(tiny_bert(), DseeConfig(nnz=4))
    with pytest.raises(petkit.ConfigError, match="sparsity must be a fraction in"):
        dsee.prune(am, sparsity=1.0)
    with pytest.raises(petkit.ConfigError, match="sparsity must be a fraction in"):
        dsee.prune(am, sparsity=0)
    with pytest.raises(petkit.ConfigError, match="mode must be"):
        dsee.prune(am, mode="rows")
    with pytest.raises(petkit.ConfigError, match="score must be"):
        dsee.prune(am, score="grad")
    with pytest.raises(petkit.ConfigError, match="needs heads"):
        dsee.prune(am, mode="heads")
    with pytest.raises(petkit.ConfigError, match="cannot prune 2 of the 2 heads"):
        dsee.prune(am, mode="heads", heads=2)
    am.merge()
    with pytest.raises(petkit.StateError, match="unmerge"):
        dsee.prune(am)
    am.unmerge()
    dsee.prune(am)
    with pytest.raises(petkit.StateError, match="already pruned"):
        dsee.prune(am)
    lora = petkit.adapt(tiny_bert(), petkit.LoraConfig(targets=["query"]))
    with pytest.raises(petkit.ConfigError, match="needs a DSEE one"):
        dsee.prune(lora)


def test_head_pruning_removes_the_least_important_heads():
    model = tiny_bert()  # 2 heads of 16 rows
    batch = tiny_batch(model)
    am = petkit.adapt(model, DseeConfig(r=2, alpha=4, nnz=4))
    _randomise(am)
    importance = {}
    for layer_i in (0, 1):
        block = f"bert.encoder.layer.{layer_i}.attention.self"
        s = sum(am.layer(f"{block}.{m}").deltas["default"].delta_weight(am.layer(f"{block}.{m}").base_layer)
                .detach().abs().sum(1).view(2, 16).sum(1) for m in ("query", "value"))
        importance[block] = int(s.argmin())
    dsee.prune(am, mode="heads", heads=1)
    seen = {}
    hooks = [am.layer(f"{b}.value").register_forward_hook(lambda m, i, o, b=b: seen.__setitem__(b, o))
             for b in importance]
    am.train()
    loss = am(**batch).loss
    loss.backward()  # the pruned rows stay zero under training: their gradient is masked too
    for b, head in importance.items():
        rows = slice(16 * head, 16 * head + 16)
        assert torch.all(seen[b][..., rows] == 0)
        assert seen[b][..., 16 * (1 - head):16 * (1 - head) + 16].abs().sum() > 0
        d = am.layer(f"{b}.value").deltas["default"]
        assert torch.all(d.lora.B.grad[rows] == 0)
    for h in hooks:
        h.remove()
    am.eval()
    y = _logits(am, batch)
    am.merge()  # head pruning masks ΔW's rows too: merging is exact and keeps the rows zero
    torch.testing.assert_close(_logits(am, batch), y, atol=1e-5, rtol=1e-5)
    for b, head in importance.items():
        assert torch.all(weight_oi(am.layer(f"{b}.value").base_layer)[16 * head:16 * head + 16] == 0)
    am.unmerge()
    torch.testing.assert_close(_logits(am, batch), y, atol=1e-5, rtol=1e-5)


def test_head_pruning_refuses_grouped_query_attention():
    am = petkit.adapt(tiny_llama(), DseeConfig(nnz=4))  # q: 4 heads, v: 2 KV heads
    with pytest.raises(petkit.ConfigError, match="grouped-query"):
        dsee.prune(am, mode="heads", heads=1)
