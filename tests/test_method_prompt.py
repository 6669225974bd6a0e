"""Prompt tuning beyond the generic matrix: inputs it rewrites, inits, PEFT files both ways, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import petkit
from petkit.testing import TINY_MODELS, tiny_batch, tiny_tokenizer


def adapted(family, m=3, **kw):
    base = TINY_MODELS[family](seed=0)
    return petkit.adapt(base, petkit.PromptTuningConfig(num_virtual_tokens=m, **kw)), tiny_batch(base, seed=1)


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_lm_loss_scores_the_callers_tokens_only(family):
    """Labels get m ignored positions in front; the logits come back without the prompt positions."""
    am, batch = adapted(family)
    out = am(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    torch.testing.assert_close(out.loss, _loss_with_prompt_position(am, batch), atol=1e-5, rtol=1e-5)


def _loss_with_prompt_position(am, batch):
    """The loss by hand: the prompt in front as embeddings, labels -100 under it, no hooks involved."""
    delta = am.model_deltas["default"]
    embeds = am.base.get_input_embeddings()(batch["input_ids"])
    m, n = delta.m, batch["input_ids"].shape[0]
    embeds = torch.cat([delta.embedding.expand(n, -1, -1), embeds], dim=1)
    mask = torch.cat([torch.ones(n, m, dtype=batch["attention_mask"].dtype), batch["attention_mask"]], dim=1)
    labels = torch.cat([torch.full((n, m), -100), batch["labels"]], dim=1)
    with am.disabled():
        return am.base(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss


def test_position_ids_count_the_prompt_first():
    am, batch = adapted("gpt2")
    positions = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    torch.testing.assert_close(logits(am, {**batch, "position_ids": positions}), logits(am, batch))


def test_positional_input_ids_work_like_keywords():
    am, batch = adapted("llama")
    with torch.no_grad():
        torch.testing.assert_close(am.base(batch["input_ids"]).logits, am.base(input_ids=batch["input_ids"]).logits)


def test_vocab_init_copies_distinct_vocabulary_rows():
    torch.manual_seed(0)
    am, _ = adapted("bert", m=5)
    table = am.base.get_input_embeddings().weight
    rows = am.model_deltas["default"].embedding
    ids = [int(torch.nonzero((table == row).all(dim=1))[0]) for row in rows]
    assert len(set(ids)) == 5


def test_text_init_copies_the_texts_token_embeddings(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    am, _ = adapted("llama", m=5, init="text", init_text="abc", tokenizer=str(tmp_path))
    ids = tokenizer("abc", add_special_tokens=False)["input_ids"]
    expected = am.base.get_input_embeddings().weight[(ids * 5)[:5]]
    torch.testing.assert_close(am.model_deltas["default"].embedding, expected)


def test_random_init_matches_the_embedding_scale():
    torch.manual_seed(0)
    am, _ = adapted("gpt2", m=48, init="random")
    std = am.base.get_input_embeddings().weight.std().item()
    assert am.model_deltas["default"].embedding.std().item() == pytest.approx(std, rel=0.15)


def test_vit_prompt_goes_after_cls():
    am, batch = adapted("vit", m=2)
    seen = []
    layer = next(m for m in am.base.modules() if type(m).__name__ == "ViTLayer")
    handle = layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    with am.disabled():
        logits(am, batch)
    logits(am, batch)
    handle.remove()
    assert seen[1] == seen[0] + 2
    assert "the whole model: 2 soft tokens after [CLS]" in am.summary(print_it=False)


def test_disable_delete_and_switching_adapters():
    am, batch = adapted("bert")
    with am.disabled():
        base_out = logits(am, batch)
    first = logits(am, batch)
    am.add(petkit.PromptTuningConfig(num_virtual_tokens=2), "other")
    am.set_active("other")
    second = logits(am, batch)
    assert not torch.allclose(first, second)
    am.set_active("default")
    torch.testing.assert_close(logits(am, batch), first)
    am.delete("default")
    am.delete("other")
    assert not am.base._forward_pre_hooks and not am.base._forward_hooks  # every hook removed
    torch.testing.assert_close(logits(am, batch), base_out)


# -- Hugging Face PEFT files ----------------------------------------------------------------------

@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_saved_for_peft_loads_in_peft_with_the_same_outputs(family, tmp_path):
    peft = pytest.importorskip("peft")
    am, batch = adapted(family)
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.normal_()
    mine = logits(am, batch)
    am.save(tmp_path, format="peft")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 3
    pm = peft.PeftModel.from_pretrained(TINY_MODELS[family](seed=0), tmp_path)
    theirs = logits(pm, batch)
    if family in ("gpt2", "llama"):  # PEFT returns the prompt positions too
        theirs = theirs[:, 3:]
    torch.testing.assert_close(theirs, mine, atol=1e-6, rtol=1e-6)
    back = petkit.load(TINY_MODELS[family](seed=0), tmp_path)
    torch.testing.assert_close(logits(back, batch), mine, atol=0, rtol=0)


@pytest.mark.parametrize("family,task", [("bert", "SEQ_CLS"), ("llama", "CAUSAL_LM")])
def test_peft_made_prompt_loads_in_petkit(family, task, tmp_path):
    peft = pytest.importorskip("peft")
    base = TINY_MODELS[family](seed=0)
    batch = tiny_batch(base, seed=1)
    pm = peft.get_peft_model(base, peft.PromptTuningConfig(task_type=task, num_virtual_tokens=4))
    theirs = logits(pm, batch)
    pm.save_pretrained(tmp_path)
    am = petkit.load(TINY_MODELS[family](seed=0), tmp_path)
    assert am.adapter_config().num_virtual_tokens == 4
    mine = logits(am, batch)
    torch.testing.assert_close(mine, theirs[:, 4:] if family == "llama" else theirs)


def test_peft_decoder_prompts_are_refused_with_the_reason(tmp_path):
    peft = pytest.importorskip("peft")
    base = TINY_MODELS["t5"](seed=0)
    peft.get_peft_model(base, peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2)).save_pretrained(tmp_path)
    fresh = TINY_MODELS["t5"](seed=0)
    with pytest.raises(petkit.AdapterFileError, match="num_transformer_submodules=2.*encoder only"):
        petkit.load(fresh, tmp_path)
    assert not any(m._forward_pre_hooks for m in fresh.modules())  # nothing left behind


def test_vit_prompt_cannot_be_saved_for_peft(tmp_path):
    am, _ = adapted("vit")
    with pytest.raises(petkit.ConfigError, match="no image-classification task type.*format='petkit'"):
        am.save(tmp_path, format="peft")


# -- bad input --------------------------------------------------------------------------------------

def test_prompt_longer_than_the_positions_is_refused():
    with pytest.raises(petkit.ConfigError, match="num_virtual_tokens=64 leaves no room.*at most 64 positions"):
        adapted("bert", m=64)


def test_input_plus_prompt_over_the_positions_names_the_fix():
    am, _ = adapted("gpt2", m=60)
    with pytest.raises(petkit.ConfigError, match="input has 8 tokens and the prompt 60.*truncate inputs to 4 tokens"):
        am(input_ids=torch.ones(1, 8, dtype=torch.long))


@pytest.mark.parametrize("kw,message", [
    ({"num_virtual_tokens": 0}, "num_virtual_tokens must be a positive integer"),
    ({"init": "zeros"}, "init must be one of vocab, text, random"),
    ({"init": "text", "init_text": "hi"}, "init='text' needs init_text .* and tokenizer"),
    ({"targets": ["query"]}, "prompt tuning has no targets"),
])
def test_bad_configs(kw, message):
    with pytest.raises(petkit.ConfigError, match=message):
        petkit.PromptTuningConfig(**kw)


def test_mixed_batches_are_a_clear_error():
    am, batch = adapted("llama")
    with pytest.raises(petkit.StateError, match="mixed-adapter batches .* cannot route the prompt adapter"):
        am(**batch, adapter_names=["default", None, None, None])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_with_a_kv_cache_equals_recomputing_whole_sequences(family):
    am, batch = adapted(family)
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.normal_(0, 0.5)
    ids, mask = batch["input_ids"][:2, :6], batch["attention_mask"][:2, :6]
    out = am.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    expected = ids
    for _ in range(4):  # greedy, no cache: the whole sequence through the prompt-tuned model each time
        with torch.no_grad():
            step = am(input_ids=expected, attention_mask=torch.ones_like(expected)).logits[:, -1].argmax(-1)
        expected = torch.cat([expected, step[:, None]], dim=1)
    torch.testing.assert_close(out, expected)
