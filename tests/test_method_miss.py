"""MiSS (Bone): dense references per variant, merging, bad input, and equality with the real PEFT package
(same base, same adapter tensors, before and after a training step; and each other's files)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import petkit
from petkit.methods.miss import MissConfig
from petkit.testing import tiny_batch, tiny_bert, tiny_gpt2, tiny_llama

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

X = torch.randn(3, 4, 10, generator=torch.Generator().manual_seed(0))


def single(in_f: int = 10, out_f: int = 12, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_f, out_f))


def randomize(params, seed: int = 3, std: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


# -- the math, against loops over the formulas -----------------------------------------------------

def reference_delta(W: torch.Tensor, B: torch.Tensor, variant: str, r: int, mini_r: int = 1) -> torch.Tensor:
    out_f, in_f = W.shape
    dW = torch.zeros_like(W)
    if variant == "bat":  # W'_ij = W_ij + W_ij B_i + B_i
        for i in range(out_f // r):
            for j in range(in_f // r):
                Wij = W[i * r:(i + 1) * r, j * r:(j + 1) * r]
                dW[i * r:(i + 1) * r, j * r:(j + 1) * r] = Wij @ B[i] + B[i]
        return dW
    for o in range(out_f):
        for c in range(in_f):  # ΔW[o, j·r + k] = B[k, o] (mini: B[k, o mod mini_r])
            dW[o, c] = B[c % r, o % mini_r] if variant == "mini" else B[c % r, o]
    return dW


@pytest.mark.parametrize("variant,r,mini_r", [("miss", 2, 1), ("miss", 4, 1), ("miss", 10, 1), ("bat", 2, 1),
                                              ("mini", 3, 4), ("mini", 4, 1)])
def test_forward_and_merge_match_the_dense_reference(variant, r, mini_r):
    model = single(in_f=10 if variant != "bat" else 8)
    x = X[..., : model[0].in_features]
    W, b = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    am = petkit.adapt(model, MissConfig(r=r, variant=variant, mini_r=mini_r, targets=["0"]))
    assert torch.equal(am(x), F.linear(x, W, b))  # B starts at zero: the base model exactly
    delta = am.layer("0").deltas["default"]
    randomize([delta.block])
    dW = reference_delta(W, delta.block.detach(), variant, r, mini_r)
    assert dW.abs().sum() > 0
    want = F.linear(x, W + dW, b)
    torch.testing.assert_close(am(x), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(delta.delta_weight(am.layer("0").base_layer), dW, atol=1e-6, rtol=1e-5)
    am.merge()
    torch.testing.assert_close(am.layer("0").base_layer.weight.detach(), W + dW, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(am(x), want, atol=1e-5, rtol=1e-5)
    am.unmerge()
    torch.testing.assert_close(am.layer("0").base_layer.weight.detach(), W, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant,shape", [("miss", (4, 12)), ("bat", (3, 4, 4)), ("mini", (4, 6))])
def test_trainable_block_shapes(variant, shape):
    am = petkit.adapt(single(in_f=8), MissConfig(r=4, variant=variant, mini_r=6 if variant == "mini" else 1, targets=["0"]))
    assert [tuple(p.shape) for p in am.trainable_parameters()] == [shape]


def test_dropout_only_while_training():
    model = single()
    am = petkit.adapt(model, MissConfig(r=4, dropout=0.5, targets=["0"]))
    randomize(am.trainable_parameters())
    am.eval()
    y = am(X)
    assert torch.equal(am(X), y)
    am.train()
    assert not torch.allclose(am(X), y)


def test_gpt2_conv1d():
    base = tiny_gpt2()
    layer = base.transformer.h[0].mlp.c_proj  # Conv1D (in 128, out 32), weight stored (in, out)
    W, b = layer.weight.detach().t().clone(), layer.bias.detach().clone()
    am = petkit.adapt(base, MissConfig(r=4, variant="bat", targets=["mlp.out"]))
    wrapped = am.layer("transformer.h.0.mlp.c_proj")
    randomize([wrapped.deltas["default"].block])
    x = torch.randn(2, 128)
    dW = reference_delta(W, wrapped.deltas["default"].block.detach(), "bat", 4)
    torch.testing.assert_close(wrapped(x), F.linear(x, W + dW, b), atol=1e-5, rtol=1e-5)


# -- bad input -------------------------------------------------------------------------------------

def test_bat_needs_widths_divisible_by_r():
    with pytest.raises(petkit.TargetError, match=r"'0'.*multiples of r=4.*variant 'miss'"):
        petkit.adapt(single(in_f=10), MissConfig(r=4, variant="bat", targets=["0"]))
    with pytest.raises(petkit.TargetError, match=r"multiples of r=5"):
        petkit.adapt(single(in_f=10, out_f=12), MissConfig(r=5, variant="bat", targets=["0"]))


def test_mini_needs_out_divisible_by_mini_r():
    with pytest.raises(petkit.TargetError, match=r"out_features=12.*multiple of mini_r=5"):
        petkit.adapt(single(), MissConfig(r=2, variant="mini", mini_r=5, targets=["0"]))


def test_r_larger_than_the_input_is_refused():
    with pytest.raises(petkit.TargetError, match=r"r=11 is larger than in_features=10"):
        petkit.adapt(single(), MissConfig(r=11, targets=["0"]))


@pytest.mark.parametrize("kwargs,message", [
    ({"r": 0}, "r must be a positive int"),
    ({"r": 2.0}, "r must be a positive int"),
    ({"variant": "bone"}, "variant must be one of miss, bat, mini"),
    ({"variant": "mini", "mini_r": 0}, "mini_r must be a positive int"),
    ({"mini_r": 4}, "mini_r applies to variant 'mini' only"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"variant": "bat", "dropout": 0.1}, "variant 'bat' has no dropout"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(petkit.ConfigError, match=message):
        MissConfig(targets=["query"], **kwargs)


# -- the real PEFT package -------------------------------------------------------------------------

VARIANTS = {  # petkit config kwargs, PEFT config kwargs; tiny Llama: q 32->32, v 32->16, down 64->32
    "miss": ({"r": 4}, {"r": 4}),
    "miss-padded": ({"r": 6}, {"r": 6}),  # 32 and 64 are not multiples of 6
    "bat": ({"r": 4, "variant": "bat"}, {"r": 4, "init_weights": "bat"}),
    "mini": ({"r": 4, "variant": "mini", "mini_r": 8}, {"r": 4, "init_weights": "mini", "mini_r": 8}),
}
TARGETS = ["q_proj", "v_proj", "down_proj"]


def peft_model(variant: str):
    return peft.get_peft_model(tiny_llama(), peft.MissConfig(target_modules=TARGETS, **VARIANTS[variant][1]))


def petkit_model(variant: str):
    return petkit.adapt(tiny_llama(), MissConfig(targets=TARGETS, **VARIANTS[variant][0]))


def peft_blocks(pm) -> dict[str, nn.Parameter]:
    return {n.removeprefix("base_model.model.").removesuffix(".miss_block.default"): p
            for n, p in pm.named_parameters() if ".miss_block." in n}


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def sgd_step(model, batch, params) -> None:
    loss = model(**batch).loss
    loss.backward()
    with torch.no_grad():
        for p in params:
            p.sub_(0.5 * p.grad)
            p.grad = None


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_equal_peft_before_and_after_a_training_step(variant):
    batch = tiny_batch(tiny_llama(), seed=1)
    pm, am = peft_model(variant), petkit_model(variant)
    blocks = peft_blocks(pm)
    assert set(blocks) == {p for p, _, _ in am.layers("default")} and len(blocks) == 6
    randomize(blocks.values(), std=0.1)
    for path, _, delta in am.layers("default"):
        with torch.no_grad():
            delta.block.copy_(blocks[path])
    base = logits(tiny_llama(), batch)
    want = logits(pm, batch)
    assert (want - base).abs().max() > 1e-2
    torch.testing.assert_close(logits(am, batch), want, atol=1e-5, rtol=1e-5)

    pm.train(), am.train()
    sgd_step(pm, batch, blocks.values())
    sgd_step(am, batch, am.trainable_parameters())
    pm.eval(), am.eval()
    for path, _, delta in am.layers("default"):
        torch.testing.assert_close(delta.block, blocks[path], atol=1e-6, rtol=1e-5)
    after = logits(pm, batch)
    assert (after - want).abs().max() > 1e-3
    torch.testing.assert_close(logits(am, batch), after, atol=1e-5, rtol=1e-5)

    # merged weights agree too
    am.merge()
    merged = pm.merge_and_unload()
    for path, layer, _ in am.layers("default"):
        torch.testing.assert_close(layer.base_layer.weight, merged.get_submodule(path).weight, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_petkit_file_loads_in_peft(variant, tmp_path):
    batch = tiny_batch(tiny_llama(), seed=1)
    am = petkit_model(variant)
    randomize(am.trainable_parameters(), std=0.1)
    want = logits(am, batch)
    am.save(tmp_path, format="peft")
    pm = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    assert pm.peft_config["default"].peft_type == peft.PeftType.MISS
    torch.testing.assert_close(logits(pm, batch), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_peft_file_loads_in_petkit(variant, tmp_path):
    batch = tiny_batch(tiny_llama(), seed=1)
    pm = peft_model(variant)
    randomize(peft_blocks(pm).values(), std=0.1)
    want = logits(pm, batch)
    pm.save_pretrained(tmp_path)
    am = petkit.load(tiny_llama(), tmp_path)
    assert am.adapter_config() == MissConfig(targets=am.adapter_config().targets, train_head=False, **VARIANTS[variant][0])
    torch.testing.assert_close(logits(am, batch), want, atol=1e-5, rtol=1e-5)


def test_classifier_with_head_both_ways(tmp_path):
    batch = tiny_batch(tiny_bert(), seed=1)
    am = petkit.adapt(tiny_bert(), MissConfig(r=4, targets=["query", "value"]))
    randomize(am.trainable_parameters(), std=0.1)
    want = logits(am, batch)
    am.save(tmp_path / "mine", format="peft")
    pm = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path / "mine").eval()
    torch.testing.assert_close(logits(pm, batch), want, atol=1e-5, rtol=1e-5)
    pm.save_pretrained(tmp_path / "theirs")
    back = petkit.load(tiny_bert(seed=0), tmp_path / "theirs")
    torch.testing.assert_close(logits(back, batch), want, atol=1e-5, rtol=1e-5)


def test_conv1d_adapter_is_not_exported_to_peft(tmp_path):
    am = petkit.adapt(tiny_gpt2(), MissConfig(r=4, targets=["attn.qkv"]))
    with pytest.raises(petkit.ConfigError, match=r"nn.Linear layers only.*c_attn.*format='petkit'"):
        am.save(tmp_path, format="peft")


def test_unknown_peft_init_is_refused(tmp_path):
    pm = peft_model("miss")
    pm.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["init_weights"] = "orthogonal"
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(petkit.AdapterFileError, match="init_weights='orthogonal' is unknown"):
        petkit.load(tiny_llama(), tmp_path)
