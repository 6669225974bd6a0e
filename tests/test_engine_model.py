"""AdaptedModel behaviour: targeting, several adapters, activation, mixed batches, errors, summary."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.core.targeting import resolve_targets
from petkit.testing import (
    tiny_batch,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_t5,
    tiny_vit,
)


def _noisy(am, name, seed=0):
    """Give an adapter non-zero weights, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in am.adapter_parameters(name, include_head=False).values():
            t.add_(torch.randn(t.shape, generator=g) * 0.2)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


# -- targeting ----------------------------------------------------------------------------------

@pytest.mark.parametrize("make,role,expected", [
    (tiny_bert, "attn.q", ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.query"]),
    (tiny_bert, "mlp.out", ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]),
    (tiny_gpt2, "attn.qkv", ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]),
    (tiny_llama, "mlp.in", ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
                            "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]),
    (tiny_t5, "xattn.v", ["decoder.block.0.layer.1.EncDecAttention.v", "decoder.block.1.layer.1.EncDecAttention.v"]),
    (tiny_vit, "attn.out", ["vit.layers.0.attention.o_proj", "vit.layers.1.attention.o_proj"]),
])
def test_role_names(make, role, expected):
    assert resolve_targets(make(), [role]) == expected


def test_names_suffixes_regex_and_exclusions():
    m = tiny_bert()
    assert resolve_targets(m, ["bert.encoder.layer.1.attention.self.key"]) == ["bert.encoder.layer.1.attention.self.key"]
    assert len(resolve_targets(m, ["query", "value"])) == 4
    assert resolve_targets(m, [r"re:.*layer\.1\..*query"]) == ["bert.encoder.layer.1.attention.self.query"]
    assert resolve_targets(m, ["query"], exclude=[r"re:.*layer\.0\..*"]) == ["bert.encoder.layer.1.attention.self.query"]


def test_all_linear_excludes_the_output_head():
    names = resolve_targets(tiny_bert(), ["all-linear"])
    assert "classifier" not in names and len(names) == 2 * 6 + 1  # 6 linears per layer + pooler
    assert "lm_head" not in resolve_targets(tiny_llama(), ["all-linear"])


def test_no_match_names_the_closest_modules():
    with pytest.raises(petkit.TargetError, match="closest module names: query"):
        petkit.adapt(tiny_bert(), petkit.LoraConfig(targets=["querry"]))


def test_unsupported_layer_type_is_a_clear_error():
    with pytest.raises(petkit.TargetError, match="BertSelfAttention, which this method cannot wrap"):
        petkit.adapt(tiny_bert(), petkit.LoraConfig(targets=["attention.self"]))


def test_gpt2_has_no_separate_q():
    with pytest.raises(petkit.TargetError, match="attn.qkv"):
        petkit.adapt(tiny_gpt2(), petkit.LoraConfig(targets=["attn.q"]))


def test_failed_adapt_leaves_the_model_untouched():
    m = tiny_bert()
    with pytest.raises(petkit.TargetError):
        petkit.adapt(m, petkit.LoraConfig(targets=["query", "nope"]))
    assert not any(hasattr(x, "deltas") for x in m.modules())


# -- configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"r": 0}, "r must be a positive int, got 0"),
    ({"alpha": -1}, "alpha must be a positive number"),
    ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
    ({"init": "svd"}, "init must be one of"),
    ({"targets": 3}, "targets must be a string or a list"),
    ({"rank_pattern": {"query": 0}}, "rank_pattern"),
])
def test_invalid_hyper_parameters(kwargs, message):
    with pytest.raises(petkit.ConfigError, match=message):
        petkit.LoraConfig(**kwargs)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(petkit.ConfigError, match="known methods: .*lora"):
        petkit.get_method("lorax")


def test_config_round_trip_keeps_values_and_warns_on_unknown_keys_only_in_saved_files():
    # issue 16: an unknown key a user writes is an error; one in a saved file (a newer petkit's) a warning
    cfg = petkit.LoraConfig(r=4, alpha=8, targets=["query"], rank_pattern={"value": 2})
    data = cfg.to_dict()
    assert petkit.LoraConfig.from_dict(data) == cfg
    with pytest.raises(petkit.ConfigError, match="from_the_future"):
        petkit.LoraConfig.from_dict({**data, "from_the_future": 1})
    with pytest.warns(UserWarning, match="from_the_future"):
        assert petkit.LoraConfig.from_saved({**data, "from_the_future": 1}) == cfg


# -- several adapters ---------------------------------------------------------------------------

def test_copy_true_leaves_the_original_untouched():
    m = tiny_bert()
    am = petkit.adapt(m, petkit.LoraConfig(targets=["query"]), copy=True)
    assert am.base is not m and not any(hasattr(x, "deltas") for x in m.modules())


def test_named_adapters_switch_disable_delete():
    m = tiny_bert()
    batch = tiny_batch(m)
    y0 = _logits(m, batch)
    am = petkit.adapt(m, petkit.LoraConfig(targets=["query"]), name="a")
    am.add(petkit.IA3Config(), name="b")
    _noisy(am, "a", 1)
    _noisy(am, "b", 2)
    assert am.active == ("a",)
    ya = _logits(am, batch)
    am.set_active("b")
    yb = _logits(am, batch)
    assert not torch.allclose(ya, yb)
    am.set_active(["a", "b"])
    yab = _logits(am, batch)
    assert not torch.allclose(yab, ya) and not torch.allclose(yab, yb)
    with am.disabled():
        torch.testing.assert_close(_logits(am, batch), y0)
    am.merge()  # both, in order; merged output equals the stacked unmerged one
    torch.testing.assert_close(_logits(am, batch), yab, atol=1e-5, rtol=1e-4)
    with pytest.raises(petkit.StateError, match="unmerge"):
        am.set_active("a")
    am.unmerge()
    am.delete("b")
    am.set_active("a")
    torch.testing.assert_close(_logits(am, batch), ya)
    am.delete("a")
    assert not any(hasattr(x, "deltas") for x in m.modules())
    torch.testing.assert_close(_logits(m, batch), y0)


def test_only_the_new_adapter_trains():
    am = petkit.adapt(tiny_bert(), petkit.LoraConfig(targets=["query"]), name="a")
    am.add(petkit.LoraConfig(targets=["value"]), name="b")
    trainable = {id(p) for p in am.trainable_parameters()}
    assert all(id(t) in trainable for t in am.adapter_parameters("b").values())
    assert all(p.requires_grad is False for n, p in am.base.named_parameters() if ".deltas." not in n)


def test_state_errors_are_clear():
    am = petkit.adapt(tiny_bert(), petkit.LoraConfig(targets=["query"]))
    with pytest.raises(petkit.ConfigError, match="no adapter named 'x'"):
        am.set_active("x")
    with pytest.raises(petkit.ConfigError, match="already exists"):
        am.add(petkit.LoraConfig(targets=["query"]))
    am.merge()
    with pytest.raises(petkit.StateError):
        with am.disabled():
            pass
    full = petkit.adapt(tiny_bert(), petkit.FullConfig())
    with pytest.raises(petkit.StateError, match="in place"):
        with full.disabled():
            pass


# -- mixed-adapter batches ----------------------------------------------------------------------

@pytest.mark.parametrize("make", [tiny_bert, tiny_llama, tiny_gpt2])
def test_mixed_batch_equals_each_sample_alone(make):
    m = make()
    batch = tiny_batch(m, batch_size=6, seq_len=8, seed=3)
    am = petkit.adapt(m, petkit.LoraConfig(r=4, targets="all-linear"), name="a")
    am.add(petkit.LoraConfig(r=2, targets=["attn.qkv"] if make is tiny_gpt2 else ["attn.q", "attn.v"]), name="b")
    am.add(petkit.IA3Config(), name="c")
    for i, n in enumerate("abc"):
        _noisy(am, n, i)
    names = ["b", None, "a", "c", "a", "b"]  # non-contiguous groups exercise the gather path
    mixed = _logits(am, {**batch, "adapter_names": names})
    for i, n in enumerate(names):
        one = {k: v[i: i + 1] for k, v in batch.items()}
        if n is None:
            with am.disabled():
                alone = _logits(am, one)
        else:
            am.set_active(n)
            alone = _logits(am, one)
        torch.testing.assert_close(mixed[i: i + 1], alone, atol=1e-5, rtol=1e-4)


def test_mixed_batch_routes_per_adapter_heads():
    m = tiny_bert()
    batch = tiny_batch(m, batch_size=4)
    am = petkit.adapt(m, petkit.LoraConfig(targets=["query"]), name="a")
    am.add(petkit.ProbeConfig(), name="p")
    _noisy(am, "a")
    with torch.no_grad():
        for t in am.adapter_parameters("p").values():
            t.add_(1.0)
    mixed = _logits(am, {**batch, "adapter_names": ["p", "p", "a", "a"]})
    am.set_active("p")
    torch.testing.assert_close(mixed[:2], _logits(am, {k: v[:2] for k, v in batch.items()}), atol=1e-5, rtol=1e-4)


def test_mixed_batch_rejects_unknown_names_and_merged_state():
    am = petkit.adapt(tiny_bert(), petkit.LoraConfig(targets=["query"]))
    batch = tiny_batch(am.base, batch_size=2)
    with pytest.raises(petkit.ConfigError, match="no adapter named"):
        am(**batch, adapter_names=["default", "zzz"])
    am.merge()
    with pytest.raises(petkit.StateError, match="unmerged"):
        am(**batch, adapter_names=["default", None])


def test_generate_with_mixed_adapters():
    m = tiny_llama()
    am = petkit.adapt(m, petkit.LoraConfig(targets=["attn.q", "attn.v"]), name="a")
    _noisy(am, "a")
    ids = tiny_batch(m, batch_size=2, seq_len=4)["input_ids"]
    out = am.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                      adapter_names=["a", None])
    assert out.shape == (2, 7)
    with am.disabled():
        base_out = am.generate(input_ids=ids[1:], attention_mask=torch.ones_like(ids[1:]), max_new_tokens=3, do_sample=False)
    assert torch.equal(out[1:], base_out)


# -- summary ------------------------------------------------------------------------------------

def test_summary_lists_adapters_and_compresses_the_tree():
    am = petkit.adapt(tiny_bert(), petkit.LoraConfig(r=4, targets=["query", "value"]))
    text = am.summary(print_it=False)
    assert "lora" in text and "bert.encoder.layer.{0..1}.attention.self.{query,value}" in text
    assert f"{am.num_parameters('default', include_head=False):,}" in text


def test_full_fine_tuning_beside_a_wrapped_adapter_saves_and_loads(tmp_path):
    """Wrapping a module after full FT selected it renames its weight (x.base_layer.weight): still found."""
    am = petkit.adapt(tiny_bert(), petkit.FullConfig())
    am.add(petkit.LoraConfig(targets=["query"]), name="l")
    with torch.no_grad():
        am.base.bert.encoder.layer[0].attention.self.query.weight.add_(0.5)
    _noisy(am, "l")
    am.set_active(["default", "l"])
    batch = tiny_batch(am.base)
    expected = _logits(am, batch)
    assert len(am.adapter_parameters("default")) == sum(1 for _ in tiny_bert().parameters())
    am.save(tmp_path)
    torch.testing.assert_close(_logits(petkit.load(tiny_bert(), tmp_path), batch), expected)


def test_alpha_must_be_finite():
    with pytest.raises(petkit.ConfigError, match="alpha"):
        petkit.LoraConfig(alpha=float("inf"))


def test_fingerprint_samples_stay_in_bounds_for_large_tensors():
    # float32 linspace(0, n - 1) rounds n - 1 up to n for n > 2**24 (SmolLM2's embedding has 28,311,552)
    big = torch.nn.Embedding(28_311_552 // 64, 64)
    fp = petkit.core.fingerprint.fingerprint(big)
    assert fp["num_parameters"] == 28_311_552 and len(fp["sample"]) == 4


def test_as_name_loads_files_saved_under_one_name_side_by_side(tmp_path):
    import petkit
    from petkit.testing import tiny_bert
    for i in range(2):
        petkit.adapt(tiny_bert(seed=0), petkit.LoraConfig(r=2, targets=["query"])).save(tmp_path / f"a{i}")
    am = petkit.load(tiny_bert(seed=0), tmp_path / "a0", as_name="first")
    am = petkit.load(am, tmp_path / "a1", as_name="second")
    assert am.adapters == ["first", "second"]
    with pytest.raises(petkit.ConfigError, match="already has an adapter named 'second'; load it with as_name="):
        petkit.load(am, tmp_path / "a1", as_name="second")
    assert am.adapters == ["first", "second"]
