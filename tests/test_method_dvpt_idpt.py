"""DVPT and IDPT beyond the generic matrix: DVPT's formula by hand and padding left out; what both
refuse (decoders, bad settings). The rest of IDPT: tests/test_method_idpt.py."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.testing import TINY_MODELS, tiny_batch


def adapted(family, config):
    base = TINY_MODELS[family](seed=0)
    return petkit.adapt(base, config), tiny_batch(base, seed=1)


def test_dvpt_module_is_the_papers_cross_attention_by_hand():
    am, _ = adapted("bert", petkit.DvptConfig(bottleneck=8, num_queries=3, heads=2))
    block = am.model_deltas["default"].blocks[0]
    torch.manual_seed(0)
    with torch.no_grad():
        block.up.weight.normal_()
        x = torch.randn(2, 5, 32)
        padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
        mine = block(x, padding)
        feats = torch.nn.functional.gelu(block.down(x))
        wq, wk, wv = block.attend.in_proj_weight.chunk(3)
        bq, bk, bv = block.attend.in_proj_bias.chunk(3)
        q, k, v = block.queries @ wq.T + bq, feats @ wk.T + bk, feats @ wv.T + bv
        heads = []
        for h in range(2):
            part = slice(4 * h, 4 * h + 4)
            scores = q[None, :, part] @ k[..., part].transpose(1, 2) / 2.0  # √(r / heads) = 2
            scores = scores.masked_fill(padding[:, None, :], float("-inf"))
            heads.append(scores.softmax(-1) @ v[..., part])
        prompts = torch.cat(heads, -1) @ block.attend.out_proj.weight.T + block.attend.out_proj.bias
        expected = x + block.up(prompts.mean(1, keepdim=True))
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)


def test_dvpt_padding_tokens_do_not_matter():  # IDPT's: tests/test_method_idpt.py
    am, batch = adapted("bert", petkit.DvptConfig(bottleneck=8, num_queries=3, heads=2))
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
        before = am(**batch).logits
        ids = batch["input_ids"].clone()
        ids[batch["attention_mask"] == 0] = 7
        torch.testing.assert_close(am(**{**batch, "input_ids": ids}).logits, before)


@pytest.mark.parametrize("method", ["DVPT", "IDPT"])
@pytest.mark.parametrize("family,message", [("gpt2", "would let a position see later tokens"),
                                            ("llama", "would let a position see later tokens"),
                                            ("t5", "needs one stack of encoder layers")])
def test_decoders_are_refused_with_the_reason(method, family, message):
    config = petkit.DvptConfig() if method == "DVPT" else petkit.IdptConfig()
    with pytest.raises(petkit.TargetError, match=f"{method} .*{message}"):
        adapted(family, config)


def test_idpt_late_layers_past_the_model_are_refused():
    with pytest.raises(petkit.ConfigError, match="late_layers=3 is more than the model's 2 layers"):
        adapted("bert", petkit.IdptConfig(late_layers=3))


@pytest.mark.parametrize("make,message", [
    (lambda: petkit.DvptConfig(bottleneck=6, heads=4), "heads=4 must divide bottleneck=6"),
    (lambda: petkit.DvptConfig(num_queries=0), "num_queries must be a positive integer"),
    (lambda: petkit.DvptConfig(shared="yes"), "shared must be true or false"),
    (lambda: petkit.IdptConfig(num_virtual_tokens=0), "num_virtual_tokens must be a positive integer"),
    (lambda: petkit.IdptConfig(generator_hidden=0), "generator_hidden must be a positive integer or null"),
])
def test_bad_configs(make, message):
    with pytest.raises(petkit.ConfigError, match=message):
        make()
