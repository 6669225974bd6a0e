"""VL-PET: gate granularities, multi-head adapter, init (G ≈ 0.5, not identity), T5 lightweight decoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import petkit
from petkit.core.registry import config_from_dict
from petkit.methods.vlpet import DECODER_EXCLUDE, VLPetConfig
from petkit.testing import TINY_MODELS, tiny_batch, tiny_bert, tiny_gpt2, tiny_t5

ATTN_OUT = "bert.encoder.layer.0.attention.output.dense"


def gelu_new(x):
    return F.gelu(x, approximate="tanh")


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _noisy(am, name="default", seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in am.adapter_parameters(name, include_head=False).values():
            t.add_(torch.randn(t.shape, generator=g) * 0.3)


def _hooks(model):
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def _small(granularity, **kw):
    return VLPetConfig(granularity=granularity, bottleneck=8, heads=4, gate_bottleneck=4, **kw)


def _run_layer(am, x_block, x):
    """The attn.out layer's output after the attention block read x_block (captured by the gate's hook)."""
    am.base.bert.encoder.layer[0].attention.self.query(x_block)
    return am.layer(ATTN_OUT)(x)


def _manual(delta, x_block, y, gate_scale=1.0):
    """H = gate_scale · G ⊙ h', h' = y + W_up gelu_new(concat_i (W_down^i y + b^i)) + b_up, from raw weights."""
    down = delta.adapter.down
    heads = [y @ down.weight[i].T + down.bias[i] for i in range(down.weight.shape[0])]
    h2 = y + gelu_new(torch.cat(heads, dim=-1)) @ delta.adapter.up.weight.T + delta.adapter.up.bias
    g = delta.gate
    if delta.granularity == "large":
        G = torch.sigmoid(gelu_new(x_block @ g.down.weight.T + g.down.bias) @ g.up.weight.T + g.up.bias)
    elif delta.granularity == "middle_x":
        G = torch.sigmoid((x_block + h2) @ g.weight.T + g.bias)
    elif delta.granularity == "middle_y":
        G = 1 + g
    else:
        G = torch.sigmoid(torch.cat([x_block, h2], -1) @ g.weight.T + g.bias).mean(dim=1, keepdim=True)
    return gate_scale * G * h2


# -- config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"granularity": "medium"}, "granularity must be one of large, middle_x, middle_y, small"),
    ({"granularity": "x_small"}, "granularity must be one of"),
    ({"bottleneck": 0}, "bottleneck must be a positive int, got 0"),
    ({"heads": 0}, "heads must be a positive int"),
    ({"bottleneck": 8, "heads": 3}, "bottleneck 8 must be divisible by heads 3"),
    ({"gate_bottleneck": -1}, "gate_bottleneck must be a positive int"),
    ({"decoder_bottleneck": 1.5}, "decoder_bottleneck must be a positive int"),
    ({"activation": "elu"}, "activation must be one of"),
    ({"gate_scale": 0}, "gate_scale must be a positive number"),
    ({"zero_init": "yes"}, "zero_init must be true or false"),
    ({"decoder_value_adapter": "auto"}, "decoder_value_adapter must be true or false"),
])
def test_bad_config_values(kwargs, message):
    with pytest.raises(petkit.ConfigError, match=message):
        VLPetConfig(**kwargs)


def test_default_targets_skip_the_decoder_but_its_value_projections():
    cfg = VLPetConfig()
    assert cfg.targets == ("attn.out", "mlp.out") and cfg.exclude == (DECODER_EXCLUDE,)
    cfg = VLPetConfig(decoder_value_adapter=True)
    assert cfg.targets == ("attn.out", "mlp.out", "xattn.v")
    assert config_from_dict(cfg.to_dict()) == cfg
    assert VLPetConfig(targets="mlp.out", decoder_value_adapter=True).targets == ("mlp.out", "xattn.v")
    assert VLPetConfig(targets="mlp.out").exclude == ()


def test_t5_lightweight_design_wraps_encoder_sublayers_and_decoder_cross_values_only():
    am = petkit.adapt(tiny_t5(), _small("large", decoder_value_adapter=True, decoder_bottleneck=4))
    paths = [p for p, _, _ in am.layers("default")]
    assert paths == [
        "encoder.block.0.layer.0.SelfAttention.o", "encoder.block.0.layer.1.DenseReluDense.wo",
        "encoder.block.1.layer.0.SelfAttention.o", "encoder.block.1.layer.1.DenseReluDense.wo",
        "decoder.block.0.layer.1.EncDecAttention.v", "decoder.block.1.layer.1.EncDecAttention.v",
    ]
    without = petkit.adapt(tiny_t5(), _small("large"))
    assert [p for p, _, _ in without.layers("default")] == paths[:4]


@pytest.mark.parametrize("make", [tiny_bert, tiny_gpt2])
def test_decoder_design_on_a_model_without_cross_attention_is_a_clear_error(make):
    model = make()
    with pytest.raises(petkit.TargetError, match="no role 'xattn.v'"):
        petkit.adapt(model, VLPetConfig(decoder_value_adapter=True))
    assert _hooks(model) == 0 and not any(hasattr(m, "deltas") for m in model.modules())


# -- gates --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("granularity,shape", [
    ("large", (2, 5, 32)), ("middle_x", (2, 5, 1)), ("middle_y", (32,)), ("small", (2, 1, 1)),
])
def test_gate_shape_per_granularity(granularity, shape):
    am = petkit.adapt(tiny_bert(), _small(granularity))
    delta = am.layer(ATTN_OUT).deltas["default"]
    x_block, h2 = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    assert delta.gate_values(x_block, h2).shape == shape
    params = {k: tuple(v.shape) for k, v in delta.state_dict().items() if k.startswith("gate")}
    assert params == {"large": {"gate.down.weight": (4, 32), "gate.down.bias": (4,), "gate.up.weight": (32, 4),
                                "gate.up.bias": (32,)},
                      "middle_x": {"gate.weight": (1, 32), "gate.bias": (1,)},
                      "middle_y": {"gate": (32,)},
                      "small": {"gate.weight": (1, 64), "gate.bias": (1,)}}[granularity]


@pytest.mark.parametrize("granularity,value", [("large", 0.5), ("middle_x", 0.5), ("middle_y", 1.0), ("small", 0.5)])
def test_gates_start_near_half_and_the_model_is_not_the_base(granularity, value):
    model = tiny_gpt2()
    batch = tiny_batch(model)
    y0 = _logits(model, batch)
    am = petkit.adapt(model, VLPetConfig(granularity=granularity, bottleneck=8, heads=4, gate_bottleneck=8))
    seen = []

    def spy(original):
        def record(*args):
            seen.append(original(*args))
            return seen[-1]
        return record
    for _, _, delta in am.layers("default"):
        delta.gate_values = spy(delta.gate_values)
    y1 = _logits(am, batch)
    assert len(seen) == 4
    for G in seen:
        assert (G - value).abs().max() < 0.1 and not torch.all(G == value)
    assert (y1 - y0).abs().max() > 1e-3  # ≈ half of every sublayer output: not identity at init
    weights = [t for k, t in am.adapter_parameters("default").items() if k.endswith(("weight", "gate"))]
    assert all(abs(t.std().item() - 0.02) < 0.01 for t in weights)  # HF init N(0, 0.02)


@pytest.mark.parametrize("granularity,value", [("large", 0.5), ("middle_x", 0.5), ("middle_y", 1.0), ("small", 0.5)])
def test_zero_init_gives_exact_gates_and_a_zero_adapter(granularity, value):
    am = petkit.adapt(tiny_bert(), _small(granularity, zero_init=True, gate_scale=0.3))
    delta = am.layer(ATTN_OUT).deltas["default"]
    assert torch.count_nonzero(delta.adapter.up.weight) == 0
    x_block, y = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    assert torch.all(delta.gate_values(x_block, y) == value)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(_run_layer(am, x_block, x), 0.3 * value * am.layer(ATTN_OUT).base_layer(x))


# -- math -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("granularity", ["large", "middle_x", "middle_y", "small"])
def test_gated_module_matches_dense_reference(granularity):
    am = petkit.adapt(tiny_bert(), _small(granularity, gate_scale=0.7))
    _noisy(am)
    layer = am.layer(ATTN_OUT)
    delta = layer.deltas["default"]
    assert delta.adapter.down.weight.shape == (4, 2, 32)  # 4 heads of 8/4
    x_block, x = torch.randn(3, 5, 32), torch.randn(3, 5, 32)
    with torch.no_grad():
        out = _run_layer(am, x_block, x)
        torch.testing.assert_close(out, _manual(delta, x_block, layer.base_layer(x), gate_scale=0.7))


def test_gate_reads_the_attention_block_input_in_the_whole_model():
    """In the model, the gate's x is the input of the attention block (post-LN BERT: the residual stream)."""
    model = tiny_bert()
    am = petkit.adapt(model, _small("large"))
    _noisy(am)
    seen = {}
    attn = model.bert.encoder.layer[1].attention
    attn.register_forward_pre_hook(lambda m, a, kw: seen.update(x=(a or (kw["hidden_states"],))[0]),
                                   with_kwargs=True)
    layer = attn.output.dense
    layer.register_forward_hook(lambda m, a, out: seen.update(out=out))
    layer.base_layer.register_forward_hook(lambda m, a, out: seen.update(y=out))
    _logits(model, tiny_batch(model))
    torch.testing.assert_close(seen["out"], _manual(layer.deltas["default"], seen["x"], seen["y"]))


def test_small_gate_is_one_value_per_sample():
    am = petkit.adapt(tiny_bert(), _small("small"))
    _noisy(am)
    delta = am.layer(ATTN_OUT).deltas["default"]
    G = delta.gate_values(torch.randn(3, 6, 32), torch.randn(3, 6, 32))
    assert G.shape == (3, 1, 1) and len(set(G.flatten().tolist())) == 3


def test_decoder_value_adapter_is_a_parallel_adapter_on_the_encoder_states():
    model = tiny_t5()
    am = petkit.adapt(model, _small("middle_y", decoder_value_adapter=True, decoder_bottleneck=4))
    _noisy(am)
    v = model.decoder.block[1].layer[1].EncDecAttention.v
    delta = v.deltas["default"]
    assert delta.adapter.down.weight.shape == (4, 32)
    seen = {}
    model.encoder.register_forward_hook(lambda m, a, out: seen.update(enc=out.last_hidden_state))
    v.register_forward_hook(lambda m, a, out: seen.update(v=out))
    v.register_forward_pre_hook(lambda m, a: seen.update(v_in=a[0]))
    _logits(am, tiny_batch(model))
    x_enc = seen["enc"]
    assert torch.equal(seen["v_in"], x_enc)  # the value projection reads the encoder states
    a = delta.adapter
    expected = v.base_layer(x_enc) + gelu_new(x_enc @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
    torch.testing.assert_close(seen["v"], expected)


def test_decoder_value_adapter_zero_init_starts_at_the_base_value():
    am = petkit.adapt(tiny_t5(), _small("large", decoder_value_adapter=True, decoder_bottleneck=4, zero_init=True))
    v = am.layer("decoder.block.0.layer.1.EncDecAttention.v")
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(v(x), v.base_layer(x), atol=0, rtol=0)


# -- engine integration -----------------------------------------------------------------------------

def test_cannot_merge():
    am = petkit.adapt(tiny_bert(), _small("large"))
    with pytest.raises(petkit.StateError, match="cannot be merged"):
        am.merge()


@pytest.mark.parametrize("granularity", ["large", "middle_y"])
def test_delete_releases_the_hooks_and_restores_the_base(granularity):
    model = tiny_t5()
    batch = tiny_batch(model)
    y0 = _logits(model, batch)
    before = _hooks(model)
    am = petkit.adapt(model, _small(granularity, decoder_value_adapter=True, decoder_bottleneck=4))
    # per gated module: a capture on the sibling and a reset on the model
    assert _hooks(model) == before + (0 if granularity == "middle_y" else 8)
    assert len(model.encoder.block[0].layer[1].DenseReluDense.wi._forward_pre_hooks) == (granularity == "large")
    assert not torch.allclose(_logits(am, batch), y0)
    am.delete("default")
    assert _hooks(model) == before
    assert not any(hasattr(m, "deltas") for m in model.modules())
    torch.testing.assert_close(_logits(model, batch), y0, atol=0, rtol=0)


def test_multi_head_save_load_round_trip(tmp_path):
    model = tiny_t5()
    batch = tiny_batch(model)
    cfg = VLPetConfig(granularity="large", bottleneck=8, heads=2, gate_bottleneck=4, decoder_value_adapter=True,
                      decoder_bottleneck=4, gate_scale=0.3)
    am = petkit.adapt(model, cfg)
    _noisy(am)
    y = _logits(am, batch)
    am.save(tmp_path / "a")
    stored = load_file(tmp_path / "a" / "adapter_model.safetensors")
    key = "default/encoder.block.0.layer.1.DenseReluDense.wo.adapter.down.weight"
    assert stored[key].shape == (2, 4, 32)  # per head: 2 heads of 8/2 rows
    fresh = tiny_t5()
    loaded = petkit.load(fresh, tmp_path / "a")
    assert loaded.adapter_config("default") == cfg
    torch.testing.assert_close(_logits(loaded, batch), y, atol=0, rtol=0)
    head = fresh.encoder.block[0].layer[1].DenseReluDense.wo.deltas["default"].adapter.down.weight
    torch.testing.assert_close(head, am.base.encoder.block[0].layer[1].DenseReluDense.wo.deltas["default"].adapter.down.weight)


def test_mixed_batch_matches_each_adapter_alone():
    model = TINY_MODELS["llama"]()
    batch = tiny_batch(model)
    am = petkit.adapt(model, _small("small"), "s")
    am.add(_small("large"), "l")
    _noisy(am, "s", 1)
    _noisy(am, "l", 2)
    alone = {}
    for name in ("s", "l"):
        am.set_active(name)
        alone[name] = _logits(am, batch)
    with am.disabled():
        alone[None] = _logits(am, batch)
    names = ["l", "s", None, "l"]
    with torch.no_grad():
        mixed = am(**batch, adapter_names=names).logits
    for i, n in enumerate(names):
        torch.testing.assert_close(mixed[i], alone[n][i], atol=1e-5, rtol=1e-5)
