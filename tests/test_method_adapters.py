"""Bottleneck adapters (Houlsby, Pfeiffer, parallel, scaled parallel) against dense references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import petkit
from petkit.core.registry import config_from_dict
from petkit.methods.adapters import BlockInput, Bottleneck, BottleneckConfig
from petkit.testing import TINY_MODELS, tiny_batch, tiny_bert, tiny_gpt2, tiny_t5


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _noisy(am, name="default", seed=0):
    """Non-zero adapter weights, as training would give."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in am.adapter_parameters(name, include_head=False).values():
            t.add_(torch.randn(t.shape, generator=g) * 0.3)


def _hooks(model):
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def _manual(delta, h, act=F.relu):
    """s · (U act(D h + bd) + bu), computed from the raw weights."""
    a = delta.adapter
    return delta.scale * (act(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias)


# -- config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"variant": "serial"}, "variant must be one of houlsby, pfeiffer, parallel, scaled_parallel"),
    ({"bottleneck": 0}, "bottleneck must be a positive int"),
    ({"bottleneck": 2.5}, "bottleneck must be a positive int"),
    ({"reduction_factor": 0}, "reduction_factor must be a positive number"),
    ({"reduction_factor": "16"}, "reduction_factor must be a positive number"),
    ({"activation": "softmax"}, "activation must be one of"),
    ({"init": "xavier"}, "init must be one of zero_up, lora, houlsby, bert"),
    ({"scale": 0}, "scale must be a positive number"),
    ({"scale": math.inf}, "scale must be a positive number"),
])
def test_bad_config_values(kwargs, message):
    with pytest.raises(petkit.ConfigError, match=message):
        BottleneckConfig(**kwargs)


def test_default_targets_and_scale_per_variant():
    assert BottleneckConfig().targets == ("attn.out", "mlp.out")
    assert BottleneckConfig(variant="pfeiffer").targets == ("mlp.out",)
    assert BottleneckConfig(variant="parallel").targets == ("mlp.out",)
    assert BottleneckConfig(variant="houlsby", targets="attn.out").targets == ("attn.out",)
    assert BottleneckConfig(variant="scaled_parallel").effective_scale == 4.0
    assert BottleneckConfig(variant="scaled_parallel", scale=2).effective_scale == 2.0
    assert BottleneckConfig(variant="parallel").effective_scale == 1.0
    cfg = BottleneckConfig(variant="scaled_parallel", bottleneck=3)
    assert config_from_dict(cfg.to_dict()) == cfg


def test_bottleneck_size_from_reduction_factor_or_explicit():
    am = petkit.adapt(tiny_bert(), BottleneckConfig(reduction_factor=4))  # width 32 -> 8
    assert {d.adapter.down.weight.shape for _, _, d in am.layers("default") if hasattr(d, "adapter")} == {(8, 32)}
    am = petkit.adapt(tiny_bert(), BottleneckConfig(reduction_factor=5, bottleneck=3))
    assert {d.adapter.up.weight.shape for _, _, d in am.layers("default") if hasattr(d, "adapter")} == {(32, 3)}
    am = petkit.adapt(tiny_bert(), BottleneckConfig(reduction_factor=5))  # 32 // 5 = 6, floored
    assert {d.adapter.down.weight.shape[0] for _, _, d in am.layers("default") if hasattr(d, "adapter")} == {6}


def test_reduction_factor_larger_than_the_width_is_a_clear_error():
    model = tiny_bert()
    with pytest.raises(petkit.TargetError, match="reduction_factor 64 leaves no bottleneck for width 32"):
        petkit.adapt(model, BottleneckConfig(reduction_factor=64))
    assert not any(hasattr(m, "deltas") for m in model.modules()) and _hooks(model) == 0


# -- math -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,activation,fn", [("houlsby", "relu", F.relu), ("pfeiffer", "gelu", F.gelu),
                                                   ("houlsby", "tanh", torch.tanh)])
def test_sequential_adapter_matches_dense_reference(variant, activation, fn):
    am = petkit.adapt(tiny_bert(), BottleneckConfig(variant=variant, bottleneck=4, activation=activation, scale=1.5))
    _noisy(am)
    path = "bert.encoder.layer.1.output.dense"
    layer = am.layer(path)
    x = torch.randn(2, 5, 64)
    y = F.linear(x, layer.base_layer.weight, layer.base_layer.bias)
    expected = y + _manual(layer.deltas["default"], y, fn)
    torch.testing.assert_close(layer(x), expected)
    attn = am.layer("bert.encoder.layer.0.attention.output.dense")
    assert (attn is not None) == (variant == "houlsby")


def test_houlsby_whole_layer_matches_a_manual_bert_layer():
    """Adapter on the sublayer output, before the residual and the post-LN norm, in both sublayers."""
    am = petkit.adapt(tiny_bert(), BottleneckConfig(variant="houlsby", bottleneck=4))
    _noisy(am)
    block = am.base.bert.encoder.layer[0]
    deltas = {p: d for p, _, d in am.layers("default")}
    ao, oo = (deltas[f"bert.encoder.layer.0.{s}.dense"] for s in ("attention.output", "output"))
    h = torch.randn(2, 6, 32)
    with torch.no_grad():
        self_out = block.attention.self(h)[0]
        dense = block.attention.output.dense.base_layer(self_out)
        a = block.attention.output.LayerNorm(dense + _manual(ao, dense) + h)
        f = block.output.dense.base_layer(block.intermediate(a))
        expected = block.output.LayerNorm(f + _manual(oo, f) + a)
        torch.testing.assert_close(block(h), expected)


@pytest.mark.parametrize("variant", ["parallel", "scaled_parallel"])
def test_parallel_adapter_reads_the_ffn_block_input_on_bert(variant):
    """y = LN(dense(intermediate(a)) + s·A(a) + a): A reads a, the input of intermediate.dense."""
    am = petkit.adapt(tiny_bert(), BottleneckConfig(variant=variant, bottleneck=4))
    _noisy(am)
    block = am.base.bert.encoder.layer[1]
    delta = am.layer("bert.encoder.layer.1.output.dense").deltas["default"]
    assert delta.block.source == "bert.encoder.layer.1.intermediate.dense"
    assert delta.scale == (4.0 if variant == "scaled_parallel" else 1.0)
    h = torch.randn(3, 5, 32)
    with torch.no_grad():
        a = block.attention(h)[0]
        f = block.output.dense.base_layer(block.intermediate(a))
        expected = block.output.LayerNorm(f + _manual(delta, a) + a)
        torch.testing.assert_close(block(h), expected)
        wrong = block.output.LayerNorm(f + _manual(delta, f) + a)  # what a sequential adapter would give
        assert not torch.allclose(block(h), wrong, atol=1e-3)


def test_parallel_adapter_on_attention_reads_the_attention_input():
    am = petkit.adapt(tiny_bert(), BottleneckConfig(variant="parallel", bottleneck=4, targets="attn.out"))
    _noisy(am)
    block = am.base.bert.encoder.layer[0]
    delta = am.layer("bert.encoder.layer.0.attention.output.dense").deltas["default"]
    assert delta.block.source == "bert.encoder.layer.0.attention.self.query"
    h = torch.randn(2, 4, 32)
    with torch.no_grad():
        dense = block.attention.output.dense.base_layer(block.attention.self(h)[0])
        expected = block.attention.output.LayerNorm(dense + _manual(delta, h) + h)
        torch.testing.assert_close(block.attention(h)[0], expected)


@pytest.mark.parametrize("make,sources", [
    (tiny_gpt2, {"transformer.h.0.attn.c_proj": "transformer.h.0.attn.c_attn",
                 "transformer.h.1.mlp.c_proj": "transformer.h.1.mlp.c_fc"}),
    (TINY_MODELS["llama"], {"model.layers.0.self_attn.o_proj": "model.layers.0.self_attn.q_proj",
                            "model.layers.1.mlp.down_proj": "model.layers.1.mlp.gate_proj"}),
    (tiny_t5, {"encoder.block.0.layer.0.SelfAttention.o": "encoder.block.0.layer.0.SelfAttention.q",
               "decoder.block.1.layer.1.EncDecAttention.o": "decoder.block.1.layer.1.EncDecAttention.q",
               "decoder.block.1.layer.2.DenseReluDense.wo": "decoder.block.1.layer.2.DenseReluDense.wi"}),
    (TINY_MODELS["vit"], {"vit.layers.1.attention.o_proj": "vit.layers.1.attention.q_proj",
                          "vit.layers.0.mlp.fc2": "vit.layers.0.mlp.fc1"}),
])
def test_block_input_source_per_family(make, sources):
    am = petkit.adapt(make(), BottleneckConfig(variant="parallel", bottleneck=4, targets=["attn.out", "mlp.out"]))
    found = {p: d.block.source for p, _, d in am.layers("default") if hasattr(d, "block")}
    assert sources.items() <= found.items()


def test_parallel_on_t5_cross_attention_reads_the_decoder_states():
    """EncDecAttention.q reads the (normalised) decoder states, k and v the encoder's: the source is q."""
    model = tiny_t5()
    am = petkit.adapt(model, BottleneckConfig(variant="parallel", bottleneck=4, targets="xattn.out"))
    _noisy(am)
    batch = tiny_batch(model)
    seen = {}
    xattn = model.decoder.block[0].layer[1]
    xattn.EncDecAttention.o.register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    xattn.EncDecAttention.o.base_layer.register_forward_hook(lambda m, a, out: seen.setdefault("base", out))
    xattn.EncDecAttention.q.register_forward_pre_hook(lambda m, a: seen.setdefault("q_in", a[0]))
    _logits(am, batch)
    delta = xattn.EncDecAttention.o.deltas["default"]
    torch.testing.assert_close(seen["out"], seen["base"] + _manual(delta, seen["q_in"]))


def test_no_block_input_outside_known_roles_is_a_clear_error():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    with pytest.raises(petkit.TargetError, match="found no sublayer block input"):
        petkit.adapt(model, BottleneckConfig(variant="parallel", bottleneck=2, targets=["2"]))
    assert _hooks(model) == 0
    am = petkit.adapt(model, BottleneckConfig(variant="pfeiffer", bottleneck=2, targets=["2"]))  # sequential: any Linear
    assert am.layer("2") is not None


# -- init -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(TINY_MODELS))
@pytest.mark.parametrize("variant,init", [("houlsby", "zero_up"), ("parallel", "lora"), ("scaled_parallel", "zero_up")])
def test_identity_at_init(family, variant, init):
    model = TINY_MODELS[family]()
    batch = tiny_batch(model)
    y0 = _logits(model, batch)
    am = petkit.adapt(model, BottleneckConfig(variant=variant, init=init, bottleneck=4, targets=["attn.out", "mlp.out"]))
    torch.testing.assert_close(_logits(am, batch), y0, atol=0, rtol=0)


def test_init_distributions():
    torch.manual_seed(0)
    inits = {}
    for init in ("zero_up", "lora", "houlsby", "bert"):
        a = Bottleneck(256, 64, 256, "relu")
        a.reset(init)
        inits[init] = a
        assert torch.count_nonzero(a.down.bias) == 0 and torch.count_nonzero(a.up.bias) == 0
    assert torch.count_nonzero(inits["zero_up"].up.weight) == 0 and torch.count_nonzero(inits["lora"].up.weight) == 0
    assert abs(inits["zero_up"].down.weight.std().item() - 0.02) < 2e-3
    bound = 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)) on fan_in 256
    assert inits["lora"].down.weight.abs().max() <= bound and inits["lora"].down.weight.abs().max() > 0.9 * bound
    for w in (inits["houlsby"].down.weight, inits["houlsby"].up.weight):
        assert w.abs().max() <= 2e-2 and abs(w.std().item() - 0.0088) < 1.5e-3  # N(0, 1e-2) cut at 2σ
    assert abs(inits["bert"].up.weight.std().item() - 0.02) < 2e-3


@pytest.mark.parametrize("init", ["houlsby", "bert"])
def test_non_zero_up_inits_are_not_exact_identity(init):
    model = tiny_gpt2()
    batch = tiny_batch(model)
    y0 = _logits(model, batch)
    y1 = _logits(petkit.adapt(model, BottleneckConfig(init=init, bottleneck=8)), batch)
    assert not torch.equal(y0, y1)
    if init == "houlsby":  # near-identity
        torch.testing.assert_close(y1, y0, atol=0.05, rtol=0.05)


# -- engine integration -----------------------------------------------------------------------------

def test_cannot_merge():
    am = petkit.adapt(tiny_bert(), BottleneckConfig())
    with pytest.raises(petkit.StateError, match="cannot be merged"):
        am.merge()


def test_delete_releases_the_hooks_and_restores_the_base():
    model = tiny_bert()
    batch = tiny_batch(model)
    y0 = _logits(model, batch)
    assert _hooks(model) == 0
    am = petkit.adapt(model, BottleneckConfig(variant="parallel", bottleneck=4, targets=["attn.out", "mlp.out"]))
    _noisy(am)
    sources = [model.bert.encoder.layer[i].intermediate.dense for i in (0, 1)]
    sources += [model.bert.encoder.layer[i].attention.self.query for i in (0, 1)]
    assert all(len(s._forward_pre_hooks) == 1 for s in sources)
    assert not torch.allclose(_logits(am, batch), y0)
    am.delete("default")
    assert all(len(s._forward_pre_hooks) == 0 for s in sources) and _hooks(model) == 0
    assert not any(hasattr(m, "deltas") for m in model.modules())
    torch.testing.assert_close(_logits(model, batch), y0, atol=0, rtol=0)


def test_a_failed_build_leaves_no_live_hook():
    """The first modules build (and hook) before a later one fails; their hooks must not outlive them."""
    model = tiny_bert()
    with pytest.raises(petkit.TargetError):  # classifier: no block input for it
        petkit.adapt(model, BottleneckConfig(variant="parallel", bottleneck=4, targets=["mlp.out", "classifier"]))
    _logits(model, tiny_batch(model))  # a dead capture removes its hook when it next fires
    assert _hooks(model) == 0


def test_missing_block_input_raises_instead_of_reading_a_stale_one():
    am = petkit.adapt(tiny_bert(), BottleneckConfig(variant="parallel", bottleneck=4))
    layer = am.layer("bert.encoder.layer.0.output.dense")
    with pytest.raises(RuntimeError, match="block input was not captured from bert.encoder.layer.0.intermediate.dense"):
        layer(torch.randn(2, 3, 64))
    am.base.bert.encoder.layer[0].intermediate.dense(torch.randn(2, 3, 32))  # captured ...
    layer(torch.randn(2, 3, 64))                                              # ... used once
    with pytest.raises(RuntimeError, match="not captured"):
        layer(torch.randn(2, 3, 64))


def test_two_parallel_adapters_in_a_mixed_batch_match_each_alone():
    model = tiny_bert()
    batch = tiny_batch(model)
    am = petkit.adapt(model, BottleneckConfig(variant="parallel", bottleneck=4, targets=["attn.out", "mlp.out"]), "a")
    am.add(BottleneckConfig(variant="scaled_parallel", bottleneck=2), "b")
    _noisy(am, "a", seed=1)
    _noisy(am, "b", seed=2)
    alone = {}
    for name in ("a", "b"):
        am.set_active(name)
        alone[name] = _logits(am, batch)
    with am.disabled():
        alone[None] = _logits(am, batch)
    names = ["b", None, "a", "b"]
    with torch.no_grad():
        mixed = am(**batch, adapter_names=names).logits
    for i, n in enumerate(names):
        torch.testing.assert_close(mixed[i], alone[n][i], atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_of_a_parallel_adapter(tmp_path):
    model = tiny_gpt2()
    batch = tiny_batch(model)
    am = petkit.adapt(model, BottleneckConfig(variant="scaled_parallel", bottleneck=4, targets=["attn.out", "mlp.out"]))
    _noisy(am)
    y = _logits(am, batch)
    am.save(tmp_path / "a")
    fresh = tiny_gpt2()
    before = _hooks(fresh)
    loaded = petkit.load(fresh, tmp_path / "a")
    torch.testing.assert_close(_logits(loaded, batch), y, atol=0, rtol=0)
    assert _hooks(fresh) == before + 8  # per adapted module: its capture on the sibling, its reset on the model


def test_block_input_capture_is_per_module():
    model = tiny_bert()
    block = BlockInput("bert.encoder.layer.0.output.dense", model)
    assert block.width == 32
    x = torch.randn(1, 2, 32)
    model.bert.encoder.layer[0].intermediate.dense(x)
    assert block.take(torch.zeros(1, 2, 64)) is x
    block.remove()
    assert _hooks(model) == 0


def test_a_lora_on_the_source_module_still_feeds_the_parallel_adapter():
    """LoRA alone on intermediate.dense would run fused, bypassing the base layer's hooks; the engine
    calls hooked base layers unfused, so stacking gives what merging the LoRA first gives."""
    model = tiny_bert()
    batch = tiny_batch(model)
    am = petkit.adapt(model, BottleneckConfig(variant="parallel", bottleneck=4), "par")
    am.add(petkit.LoraConfig(r=2, targets="mlp.in", train_head=False), "lora")
    with torch.no_grad():
        for _, _, delta in am.layers("lora"):
            if hasattr(delta, "B"):  # not the task head
                delta.B.normal_()  # a non-zero LoRA, so the stacked output differs from the adapter alone
        for _, _, delta in am.layers("par"):
            for p in delta.parameters():
                p.normal_(std=0.1)
    am.set_active(["par", "lora"])
    stacked = _logits(am, batch)
    am.merge("lora")
    torch.testing.assert_close(_logits(am, batch), stacked, atol=1e-5, rtol=1e-4)
    am.unmerge()
    am.set_active(["par"])
    assert not torch.allclose(_logits(am, batch), stacked, atol=1e-4)



def test_deberta_reusing_its_query_projection_on_positions_still_feeds_the_block_input():
    """DeBERTa runs query_proj on the hidden states, then on its relative-position embeddings (shape
    (1, 2·span, d)). With batch 1 and 2·span tokens both calls have the same leading shape: the
    parallel adapter must still read the hidden states, the attention block's input."""
    from petkit.testing import tiny_model

    model = tiny_model("deberta-v2", "classification")
    span = model.config.position_buckets  # 8: the position embeddings read are (1, 16, d)
    batch = {"input_ids": torch.randint(5, 100, (1, 2 * span)), "attention_mask": torch.ones(1, 2 * span, dtype=torch.long)}
    am = petkit.adapt(model, BottleneckConfig(variant="parallel", bottleneck=4, targets=["attn.out"]))
    seen, read = [], []
    model.deberta.encoder.layer[0].attention.self.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    delta = dict((p, d) for p, _, d in am.layers("default"))["deberta.encoder.layer.0.attention.output.dense"]
    delta.adapter.register_forward_pre_hook(lambda m, args: read.append(args[0]))
    am(**batch)
    assert read[0] is seen[0]
