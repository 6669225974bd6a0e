"""APT beyond the generic matrix: the formula on one layer, causal safety in decoders, its FLOPs
against deep prompts of the same length, bad input."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import petkit
from petkit.testing import TINY_MODELS, tiny_batch


def adapted(family, m=4, **kw):
    base = TINY_MODELS[family](seed=0)
    return petkit.adapt(base, petkit.AptConfig(num_virtual_tokens=m, **kw)), tiny_batch(base, seed=1)


def test_first_layer_output_follows_the_formula():
    am, batch = adapted("bert")
    delta = am.model_deltas["default"]
    with torch.no_grad():
        delta.v.normal_()
        delta.scale.fill_(0.3)
    layer = am.base.bert.encoder.layer[0].attention
    seen = {}
    hooks = [layer.self.query.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0])),
             layer.output.dense.register_forward_hook(lambda m, a, out: seen.setdefault("out", out))]
    with torch.no_grad():
        am(**batch)
        adapted_out = seen.pop("out")
        with am.disabled():
            am(**batch)
    for h in hooks:
        h.remove()
    x, h = seen["x"], seen["out"]
    p, u, v = delta.prompts[0], delta.u[0], delta.v[0]
    a = torch.relu(x @ (p + p @ u @ v).T)
    expected = torch.exp(torch.tensor(0.3)) * (h + a.max(-1, keepdim=True).values * (a @ p))
    torch.testing.assert_close(adapted_out, expected, atol=1e-5, rtol=1e-5)


def test_decoder_positions_do_not_see_later_tokens():
    am, batch = adapted("llama")
    ids = batch["input_ids"][:1]
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 100
    with torch.no_grad():
        torch.testing.assert_close(am(input_ids=ids).logits[:, :-1], am(input_ids=changed).logits[:, :-1])


def _extra_flops(config, base, batch):
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        base(**batch)
    am = petkit.adapt(base, config)
    with torch.no_grad(), FlopCounterMode(display=False) as adapted_:
        am(**batch)
    am.delete("default")
    return adapted_.get_total_flops() - plain.get_total_flops()


def test_apt_costs_fewer_flops_than_deep_prompts_of_the_same_length():
    """VPT-deep puts m tokens through every layer (attention over N + m, FFN over m more); APT adds
    one N × m kernel per layer. Counted by torch's FLOP counter, not timed."""
    base = TINY_MODELS["vit"](seed=0)
    batch = {"pixel_values": tiny_batch(base, seed=1)["pixel_values"]}
    apt = _extra_flops(petkit.AptConfig(num_virtual_tokens=8), base, batch)
    deep = _extra_flops(petkit.DeepPromptConfig(num_virtual_tokens=8), base, batch)
    assert 0 < apt < deep / 2


@pytest.mark.parametrize("kw,message", [
    ({"num_virtual_tokens": 0}, "num_virtual_tokens must be a positive integer"),
    ({"key_rank": 0}, "key_rank must be a positive integer"),
    ({"targets": ["query"]}, "APT has no targets"),
])
def test_bad_configs(kw, message):
    with pytest.raises(petkit.ConfigError, match=message):
        petkit.AptConfig(**kw)
