"""Prefix tuning beyond the generic matrix: the attention it changes, positions, generation, folding,
PEFT files both ways, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import petkit
from petkit.testing import TINY_MODELS, tiny_batch


def adapted(family, m=3, attention="eager", seed=0, **kw):
    base = TINY_MODELS[family](seed=0)
    base.set_attn_implementation(attention)
    am = petkit.adapt(base, petkit.PrefixTuningConfig(num_virtual_tokens=m, **kw))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.normal_()
    return am, tiny_batch(base, seed=1)


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_bert_prefix_equals_tokens_read_through_the_frozen_key_and_value_projections():
    """An independent route to the same numbers: BERT's layer input goes straight into its key and value
    projections, so a token p put in front of layer l's input (and its output dropped) is prefix
    K = W_k p + b_k, V = W_v p + b_v. Checks the mask widening on a padded batch, eager and sdpa."""
    for attention in ("eager", "sdpa"):
        am, batch = adapted("bert", m=2, projection=False, attention=attention)
        delta = am.model_deltas["default"]
        tokens = torch.randn(len(delta.attention), 2, 32)
        with torch.no_grad():
            rows = []
            for attn, p in zip(delta.attention, tokens):
                k = attn.key(p).view(2, delta.kv_heads, delta.head_dim)
                v = attn.value(p).view(2, delta.kv_heads, delta.head_dim)
                rows.append(torch.stack([k, v], dim=1))  # (m, 2, heads, head dim)
            delta.table.copy_(torch.stack(rows, dim=1).reshape(2, -1))
        mine = _encoded(am.base, batch)  # the encoder's output: the task head is the adapter's, not the base's
        with am.disabled():
            theirs = _with_inserted_tokens(am.base, tokens, batch)
            assert not torch.allclose(theirs, _encoded(am.base, batch), atol=1e-3)
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def _encoded(bert, batch):
    with torch.no_grad():
        return bert.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def _with_inserted_tokens(bert, tokens, batch):
    handles = []
    for layer, p in zip(bert.bert.encoder.layer, tokens):
        def before(module, args, kwargs, p=p):  # BertLayer(hidden_states, attention_mask, ...)
            hidden, mask, rest = args[0], args[1], args[2:]
            if mask is not None:  # (batch, 1, query, key): the tokens are seen by everyone and see everyone
                fill = True if mask.dtype == torch.bool else 0.0
                mask = torch.nn.functional.pad(mask, (len(p), 0, len(p), 0), value=fill)
            return (torch.cat([p.expand(hidden.shape[0], -1, -1), hidden], dim=1), mask, *rest), kwargs

        def after(module, args, output, m=len(p)):
            return (output[0][:, m:],) + tuple(output[1:]) if isinstance(output, tuple) else output[:, m:]
        handles += [layer.register_forward_pre_hook(before, with_kwargs=True), layer.register_forward_hook(after)]
    try:
        return _encoded(bert, batch)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5", "vit", "bert"])
def test_eager_and_sdpa_give_the_same_outputs(family):
    """sdpa gets no mask for an unpadded causal batch; the prefix must then build the causal mask itself."""
    eager, batch = adapted(family)
    sdpa, _ = adapted(family, attention="sdpa")
    if "attention_mask" in batch:
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    torch.testing.assert_close(logits(sdpa, batch), logits(eager, batch), atol=1e-5, rtol=1e-5)


def test_t5_prefixes_self_attention_of_encoder_and_decoder_not_cross_attention():
    am, _ = adapted("t5")
    attention = am.model_deltas["default"].attention
    names = {m: n for n, m in am.base.named_modules()}
    assert [names[m] for m in attention] == [f"{stack}.block.{i}.layer.0.SelfAttention"
                                             for stack in ("encoder", "decoder") for i in range(2)]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_inputs_start_after_the_prefix(family):
    am, batch = adapted(family)
    positions = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    torch.testing.assert_close(logits(am, {**batch, "position_ids": positions}), logits(am, batch))
    with am.disabled():
        shifted = am.base(**batch, position_ids=positions + 3).logits
    assert not torch.allclose(shifted, logits(am, batch))  # the prefix itself changes the outputs


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_with_a_kv_cache_equals_recomputing_whole_sequences(family):
    am, batch = adapted(family, projection=False)
    ids = batch["input_ids"][:2, :6]
    out = am.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                      eos_token_id=None, pad_token_id=0)
    expected = ids
    for _ in range(4):
        step = logits(am, {"input_ids": expected}).argmax(-1)[:, -1]
        expected = torch.cat([expected, step[:, None]], dim=1)
    assert len(set(expected[:, -4:].flatten().tolist())) > 1  # not a degenerate constant sequence
    torch.testing.assert_close(out, expected)


def test_fold_keeps_the_outputs_and_drops_the_mlp(tmp_path):
    am, batch = adapted("llama", projection_hidden=16)
    before = logits(am, batch)
    count = am.num_parameters("default")
    am.fold("default")
    delta = am.model_deltas["default"]
    assert not hasattr(delta, "mlp") and delta.table.requires_grad
    assert am.adapter_config().projection is False and am.num_parameters("default") < count
    torch.testing.assert_close(logits(am, batch), before, atol=1e-6, rtol=1e-6)
    am.save(tmp_path)
    torch.testing.assert_close(logits(petkit.load(TINY_MODELS["llama"](seed=0), tmp_path), batch), before,
                               atol=1e-6, rtol=1e-6)


def test_fold_of_a_method_without_one_is_a_clear_error():
    am = petkit.adapt(TINY_MODELS["bert"](seed=0), petkit.LoraConfig(r=2, targets=["query"]))
    with pytest.raises(petkit.StateError, match="lora adapter 'default' has nothing to fold"):
        am.fold()


def test_delete_restores_the_models_own_attention():
    am, batch = adapted("gpt2", attention="sdpa")
    with am.disabled():
        base_out = logits(am, batch)
    assert am.base.config._attn_implementation == "petkit+sdpa"
    am.add(petkit.PrefixTuningConfig(num_virtual_tokens=2), "other")
    am.delete("default")
    assert am.base.config._attn_implementation == "petkit+sdpa"  # "other" still needs it
    am.delete("other")
    assert am.base.config._attn_implementation == "sdpa"
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in am.base.modules())  # every hook removed
    torch.testing.assert_close(logits(am, batch), base_out)


# -- Hugging Face PEFT files ----------------------------------------------------------------------

@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_saved_for_peft_loads_in_peft_with_the_same_outputs(family, tmp_path):
    """PEFT's forward, not its generate(): with transformers 5.24, PEFT 0.21's generate() of a prefix
    model gives other tokens than its own step-by-step forward (for Llama those of the bare base model)."""
    peft = pytest.importorskip("peft")
    am, batch = adapted(family)  # with the MLP: the export folds it
    mine = logits(am, batch)
    am.save(tmp_path, format="peft")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["prefix_projection"] is False
    pm = peft.PeftModel.from_pretrained(TINY_MODELS[family](seed=0), tmp_path)
    torch.testing.assert_close(logits(pm, batch), mine, atol=1e-5, rtol=1e-5)
    back = petkit.load(TINY_MODELS[family](seed=0), tmp_path)
    torch.testing.assert_close(logits(back, batch), mine, atol=1e-5, rtol=1e-5)


def test_peft_made_prefix_loads_in_petkit(tmp_path):
    peft = pytest.importorskip("peft")
    base = TINY_MODELS["llama"](seed=0)
    batch = tiny_batch(base, seed=1)
    pm = peft.get_peft_model(copy.deepcopy(base), peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    theirs = logits(pm, batch)
    pm.save_pretrained(tmp_path)
    am = petkit.load(base, tmp_path)
    assert am.adapter_config().num_virtual_tokens == 4 and am.adapter_config().projection is False
    torch.testing.assert_close(logits(am, batch), theirs, atol=1e-5, rtol=1e-5)


def test_prefix_file_for_other_layers_is_refused(tmp_path):
    am, _ = adapted("llama")
    am.save(tmp_path, format="peft")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "num_layers": 5}))
    with pytest.raises(petkit.AdapterFileError, match="made for num_layers=5, the model has 2"):
        petkit.load(TINY_MODELS["llama"](seed=0), tmp_path)


@pytest.mark.parametrize("family", ["bert", "t5", "vit"])
def test_encoder_prefixes_cannot_be_saved_for_peft(family, tmp_path):
    am, _ = adapted(family)
    with pytest.raises(petkit.ConfigError, match="decoder-only causal LMs: save this adapter with format='petkit'"):
        am.save(tmp_path, format="peft")


# -- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,message", [
    ({"num_virtual_tokens": 0}, "num_virtual_tokens must be a positive integer"),
    ({"projection": "yes"}, "projection must be true or false"),
    ({"projection_hidden": -1}, "projection_hidden must be a positive integer"),
    ({"projection": False, "projection_hidden": 8}, "projection_hidden needs projection=true"),
    ({"targets": ["query"]}, "prefix tuning has no targets"),
])
def test_bad_configs(kw, message):
    with pytest.raises(petkit.ConfigError, match=message):
        petkit.PrefixTuningConfig(**kw)


def test_prefix_longer_than_the_positions_is_refused():
    with pytest.raises(petkit.ConfigError, match="num_virtual_tokens=64 leaves no room.*at most 64 positions"):
        adapted("gpt2", m=64)


def test_input_plus_prefix_over_the_positions_names_the_fix():
    am, _ = adapted("gpt2", m=60)
    with pytest.raises(petkit.ConfigError, match="reach position 67, past the model's 64 positions; truncate inputs to 4"):
        am(input_ids=torch.ones(1, 8, dtype=torch.long))


def test_an_attention_it_cannot_wrap_is_named():
    base = TINY_MODELS["llama"](seed=0)
    base.config._attn_implementation = "flash_attention_2"
    with pytest.raises(petkit.TargetError, match="need eager or sdpa attention.*attn_implementation='sdpa'"):
        petkit.adapt(base, petkit.PrefixTuningConfig())
    assert not any(m._forward_pre_hooks for m in base.modules())  # nothing left behind


def test_t5_generate_with_a_kv_cache_equals_recomputing():
    am, batch = adapted("t5", projection=False)
    ids, mask = batch["input_ids"][:2], batch["attention_mask"][:2]
    out = am.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, eos_token_id=None)
    decoded = torch.zeros(2, 1, dtype=torch.long)
    for _ in range(4):
        step = logits(am, {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoded}).argmax(-1)[:, -1]
        decoded = torch.cat([decoded, step[:, None]], dim=1)
    assert len(set(decoded[:, 1:].flatten().tolist())) > 1  # not a degenerate constant sequence
    torch.testing.assert_close(out, decoded)
