"""Deep prompts: VPT-deep on ViT checked against a hand-written layer loop; P-tuning v2 on text is
prefix tuning without the MLP."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.testing import TINY_MODELS, tiny_batch


def test_vpt_deep_equals_a_hand_written_layer_loop():
    base = TINY_MODELS["vit"](seed=0)
    am = petkit.adapt(base, petkit.DeepPromptConfig(num_virtual_tokens=3))
    prompts = am.model_deltas["default"].prompts
    assert prompts.shape == (2, 3, 32)
    pixels = tiny_batch(base, seed=1)["pixel_values"]
    with torch.no_grad():
        mine = am.base.vit(pixel_values=pixels).last_hidden_state
        with am.disabled():
            plain = am.base.vit(pixel_values=pixels).last_hidden_state
            hidden = am.base.vit.embeddings(pixels)
            for layer, p in zip(am.base.vit.layers, prompts):  # [CLS, P_l, patches] in, prompt outputs out
                out = layer(torch.cat([hidden[:, :1], p.expand(len(pixels), -1, -1), hidden[:, 1:]], dim=1))
                hidden = torch.cat([out[:, :1], out[:, 4:]], dim=1)
            theirs = am.base.vit.layernorm(hidden)
    assert mine.shape == plain.shape and not torch.allclose(mine, plain, atol=1e-4)
    torch.testing.assert_close(mine, theirs)
    assert "3 prompt tokens after [CLS] in each of 2 layers (VPT-deep)" in am.summary(print_it=False)


def test_text_deep_prompts_are_p_tuning_v2_prefixes():
    base = TINY_MODELS["llama"](seed=0)
    batch = tiny_batch(base, seed=1)
    deep = petkit.adapt(base, petkit.DeepPromptConfig(num_virtual_tokens=2))
    table = deep.model_deltas["default"].table
    assert table.shape == (2, 2 * 2 * 2 * 8) and not hasattr(deep.model_deltas["default"], "mlp")
    with torch.no_grad():
        mine = deep(**batch).logits
    deep.delete("default")
    prefix = petkit.adapt(deep.base, petkit.PrefixTuningConfig(num_virtual_tokens=2, projection=False))
    with torch.no_grad():
        prefix.model_deltas["default"].table.copy_(table)
        torch.testing.assert_close(prefix(**batch).logits, mine, atol=0, rtol=0)


@pytest.mark.parametrize("kw,message", [
    ({"num_virtual_tokens": 0}, "num_virtual_tokens must be a positive integer"),
    ({"targets": ["query"]}, "deep prompts have no targets"),
])
def test_bad_configs(kw, message):
    with pytest.raises(petkit.ConfigError, match=message):
        petkit.DeepPromptConfig(**kw)


def test_text_deep_prompts_save_as_peft_prefixes(tmp_path):
    peft = pytest.importorskip("peft")
    base = TINY_MODELS["gpt2"](seed=0)
    batch = tiny_batch(base, seed=1)
    am = petkit.adapt(base, petkit.DeepPromptConfig(num_virtual_tokens=2))
    with torch.no_grad():
        mine = am(**batch).logits
    am.save(tmp_path, format="peft")
    theirs = peft.PeftModel.from_pretrained(TINY_MODELS["gpt2"](seed=0), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(theirs(**batch).logits, mine, atol=1e-5, rtol=1e-5)


def test_vit_deep_prompts_are_not_a_peft_format(tmp_path):
    am = petkit.adapt(TINY_MODELS["vit"](seed=0), petkit.DeepPromptConfig(num_virtual_tokens=2))
    with pytest.raises(petkit.ConfigError, match="PEFT has no per-layer prompt tokens .*format='petkit'"):
        am.save(tmp_path, format="peft")
