"""SVFit: the math against a dense SVD reference, the energy rule, merging, the σ-only file, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import petkit
from petkit.methods.svfit import SVFitConfig
from petkit.testing import tiny_batch, tiny_bert, tiny_gpt2, tiny_llama

X = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(0))


def linear(seed: int = 0, out_f: int = 24, in_f: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_f, out_f))


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_forward_is_the_papers_formula():
    # y = W_e x + U_r diag(σ') V_rᵀ x + b with W_e = W − W_r, built from an independent float64 SVD
    model = linear()
    W, b = model[0].weight.detach().double().clone(), model[0].bias.detach().double().clone()
    am = petkit.adapt(model, SVFitConfig(r=5, targets=["0"]))
    delta = am.layer("0").deltas["default"]
    U, S, Vh = torch.linalg.svd(W)
    torch.testing.assert_close(delta.sigma.detach().double(), S[:5], atol=1e-5, rtol=1e-5)  # init: σ' = σ
    with torch.no_grad():
        delta.sigma.mul_(torch.tensor([1.5, 0.5, 2.0, 0.0, -1.0]))
    s_new = delta.sigma.detach().double()
    W_r = U[:, :5] @ torch.diag(S[:5]) @ Vh[:5]
    # SVD signs may differ between the two runs: align each reference pair with petkit's
    signs = torch.sign((U[:, :5] * delta.U.double()).sum(0))
    U5, V5 = U[:, :5] * signs, Vh[:5] * signs[:, None]
    want = F.linear(X.double(), (W - W_r) + U5 @ torch.diag(s_new) @ V5, b)
    torch.testing.assert_close(am(X).double(), want, atol=3e-4, rtol=1e-4)  # float32 SVD vs the float64 one


def test_identity_at_init_and_only_singular_values_train():
    base = tiny_llama()
    batch = tiny_batch(base)
    y0 = logits(base, batch)
    am = petkit.adapt(base, SVFitConfig(r=3, targets=["attn.q", "mlp.out"]))
    assert torch.equal(logits(am, batch), y0)
    named = {n for n, p in am.named_parameters() if p.requires_grad}
    assert named and all(n.endswith(".sigma") for n in named)
    assert am.num_parameters("default") == 3 * 2 * 2  # r × (2 layers × 2 targets)


def test_conv1d_delta_is_in_out_in_layout():
    base = tiny_gpt2()
    W = base.transformer.h[0].attn.c_attn.weight.detach().clone()  # Conv1D: (in, out)
    am = petkit.adapt(base, SVFitConfig(r=4, targets=["attn.qkv"]))
    delta = am.layer("transformer.h.0.attn.c_attn").deltas["default"]
    with torch.no_grad():
        delta.sigma.add_(0.3)
    dW = delta.delta_weight(am.layer("transformer.h.0.attn.c_attn").base_layer)
    assert dW.shape == (96, 32)
    x = torch.randn(2, 32)
    want = x @ (W + dW.t()) + base.transformer.h[0].attn.c_attn.base_layer.bias
    torch.testing.assert_close(am.layer("transformer.h.0.attn.c_attn")(x), want, atol=1e-5, rtol=1e-5)


def test_energy_picks_the_smallest_r_per_matrix():
    # A matrix with a known spectrum: σ² = 16, 4, 1, 0.25, ... (energy shares 0.75, 0.94, 0.98, 0.996)
    torch.manual_seed(1)
    Q1, _ = torch.linalg.qr(torch.randn(16, 16))
    Q2, _ = torch.linalg.qr(torch.randn(16, 16))
    S = 4.0 * 0.5 ** torch.arange(16.0)
    model = nn.Sequential(nn.Linear(16, 16))
    with torch.no_grad():
        model[0].weight.copy_(Q1 @ torch.diag(S) @ Q2.t())
    for energy, r in ((0.7, 1), (0.76, 2), (0.9, 2), (0.95, 3), (0.99, 4), (1.0, 16)):
        am = petkit.adapt(model, SVFitConfig(energy=energy, targets=["0"]), copy=True)
        assert am.layer("0").deltas["default"].sigma.numel() == r, energy
    assert SVFitConfig().energy == 0.99 and SVFitConfig().r == 0


def test_merge_unmerge_exact():
    base = tiny_bert()
    batch = tiny_batch(base)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    am = petkit.adapt(base, SVFitConfig(r=4, targets="all-linear"))
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.2)
    want = logits(am, batch)
    layer = am.layer("bert.encoder.layer.0.attention.self.query")
    delta = layer.deltas["default"]
    expected_w = layer.base_layer.weight.detach() + (delta.U * (delta.sigma - delta.sigma0)) @ delta.Vh
    am.merge()
    torch.testing.assert_close(layer.base_layer.weight.detach(), expected_w.detach())
    torch.testing.assert_close(logits(am, batch), want, atol=1e-5, rtol=1e-5)
    am.unmerge()
    for k, v in am.base.state_dict().items():
        if ".deltas." not in k and "classifier" not in k:
            torch.testing.assert_close(v, before[k.replace(".base_layer.", ".")], atol=1e-6, rtol=1e-6)


def test_file_holds_only_the_singular_values_and_reloads_exactly(tmp_path):
    base = tiny_bert()
    batch = tiny_batch(base)
    am = petkit.adapt(base, SVFitConfig(targets=["attn.q", "attn.v"], train_head=False))  # r by energy (0.99)
    am.train()
    opt = torch.optim.AdamW(am.trainable_parameters(), lr=0.1)
    for _ in range(3):
        loss = am(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    am.eval()
    want = logits(am, batch)
    am.save(tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert tensors and all(k.endswith(".sigma") for k in tensors)
    assert sum(t.numel() for t in tensors.values()) == am.num_parameters("default")
    back = petkit.load(tiny_bert(), tmp_path)
    assert torch.equal(logits(back, batch), want)  # U_r, V_r recomputed from the same base: bit for bit
    for (_, _, d1), (_, _, d2) in zip(am.layers("default"), back.layers("default")):
        assert torch.equal(d1.U, d2.U) and torch.equal(d1.Vh, d2.Vh) and torch.equal(d1.sigma0, d2.sigma0)


def test_r_larger_than_the_rank_is_refused():
    with pytest.raises(petkit.TargetError, match=r"query': r=33 is larger than the rank of its 32x32 weight \(32\)"):
        petkit.adapt(tiny_bert(), SVFitConfig(r=33, targets=["attn.q"]))
    model = linear(out_f=8, in_f=8)
    with torch.no_grad():  # rank 2
        model[0].weight.copy_(torch.randn(8, 2) @ torch.randn(2, 8))
    with pytest.raises(petkit.TargetError, match=r"r=3 is larger than the rank of its 8x8 weight \(2\)"):
        petkit.adapt(model, SVFitConfig(r=3, targets=["0"]))
    am = petkit.adapt(model, SVFitConfig(energy=1.0, targets=["0"]))  # energy never goes past the rank
    assert am.layer("0").deltas["default"].sigma.numel() == 2


@pytest.mark.parametrize("kwargs,message", [
    ({"r": -1}, "r must be a positive int"),
    ({"r": True}, "r must be a positive int"),
    ({"r": 2.5}, "r must be a positive int"),
    ({"r": 4, "energy": 0.9}, "give r or energy, not both"),
    ({"energy": 0.0}, r"energy must be in \(0, 1\]"),
    ({"energy": 1.5}, r"energy must be in \(0, 1\]"),
    ({"energy": "high"}, r"energy must be in \(0, 1\]"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(petkit.ConfigError, match=message):
        SVFitConfig(targets=["query"], **kwargs)


def test_config_round_trips_through_a_dict():
    for cfg in (SVFitConfig(r=4, targets=["query"]), SVFitConfig(energy=0.9, targets=["query"])):
        assert petkit.core.registry.config_from_dict(cfg.to_dict()) == cfg
