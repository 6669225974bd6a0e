"""Forwards that hold no state between calls: activation checkpointing (layers recomputed in backward)
and a forward nested in another give the same numbers as a plain forward, and prefix tuning's
attention wrappers are in transformers' tables only while some model uses them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import petkit
from petkit.testing import TINY_MODELS, tiny_batch

CONFIGS = {
    "lora": lambda: petkit.LoraConfig(r=4, alpha=8),
    "bottleneck": lambda: petkit.BottleneckConfig(bottleneck=8),
    "prompt": lambda: petkit.PromptTuningConfig(num_virtual_tokens=3),
    "prefix": lambda: petkit.PrefixTuningConfig(num_virtual_tokens=3),
    "lst": lambda: petkit.LstConfig(),
}


def _adapted(family: str, method: str, checkpointing: str | None, config=None):
    """A tiny model with dropout, trainable parameters moved off their init (so each one matters);
    checkpointing: None, or "before"/"after" adapting; config: a config class or factory (default CONFIGS')."""
    base = TINY_MODELS[family](seed=0, dropout=0.1)
    if checkpointing == "before":
        base.gradient_checkpointing_enable()
    torch.manual_seed(0)  # the same random init either way
    am = petkit.adapt(base, (config or CONFIGS[method])())
    if checkpointing == "after":
        base.gradient_checkpointing_enable()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    am.train()
    return am


def _step(am, batch):
    torch.manual_seed(2)  # the same dropout masks (checkpointing replays the RNG state when it recomputes)
    out = am(**batch)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad for n, p in am.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("when", ["before", "after"])
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(family, method, when):
    plain = _adapted(family, method, None)
    checkpointed = _adapted(family, method, when)
    assert checkpointed.base.is_gradient_checkpointing
    batch = tiny_batch(plain, seed=3)
    logits, grads = _step(plain, batch)
    logits_ckpt, grads_ckpt = _step(checkpointed, batch)
    torch.testing.assert_close(logits_ckpt, logits, rtol=0, atol=1e-6)
    assert grads_ckpt.keys() == grads.keys()
    assert all(g is not None for g in grads.values())
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)


NESTED = ["prompt", "prefix", "lst"]


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("method", NESTED)
def test_a_forward_nested_in_another_leaves_the_outer_one_unchanged(family, method):
    """The model is called again (another batch, another length) from inside its own forward, at the
    first layer: what the outer call's hooks handed each other (the prompt positions to cut, LST's
    inputs and first side input) must still be the outer call's."""
    am = _adapted(family, method, None)
    am.eval()
    outer, inner = tiny_batch(am, seq_len=8, seed=4), tiny_batch(am, batch_size=2, seq_len=5, seed=5)
    with torch.no_grad():
        expected = am(**outer).logits
        expected_inner = am(**inner).logits
    seen = []

    def call_again(module, args, kwargs):
        if not seen:
            seen.append(None)
            seen[0] = am(**inner).logits
    layer = petkit.models.structure.layer_stacks(am.base)[0][1][0]
    handle = layer.register_forward_pre_hook(call_again, with_kwargs=True)
    try:
        with torch.no_grad():
            got = am(**outer).logits
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0], expected_inner, rtol=0, atol=1e-6)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


_BYSTANDER = """
import torch, petkit
from petkit.models import attention
from petkit.testing import TINY_MODELS, tiny_batch

def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits

bystander = TINY_MODELS["llama"](seed=0)
bystander.set_attn_implementation("sdpa")
other = TINY_MODELS["llama"](seed=0)
other.set_attn_implementation("sdpa")
batch = tiny_batch(bystander, seed=6)
before = logits(bystander, batch)
assert not attention.installed()
am = petkit.adapt(other, petkit.PrefixTuningConfig(num_virtual_tokens=2))
assert attention.installed() and other.config._attn_implementation == "petkit+sdpa"
assert bystander.config._attn_implementation == "sdpa"
assert torch.equal(logits(bystander, batch), before)
assert not torch.equal(logits(am, batch), before)
am.delete("default")
assert not attention.installed()
assert other.config._attn_implementation == "sdpa"
assert torch.equal(logits(bystander, batch), before)
assert torch.equal(logits(other, batch), before)
print("ok")
"""


def test_attention_wrappers_are_installed_only_while_a_prefix_needs_them():
    """An un-adapted model runs bit for bit the same before, during and after another model's prefix
    adapter; the wrappers leave transformers' tables with the last prefix, and the adapted model goes
    back to its own implementation and numbers. In a fresh interpreter: other tests' adapted models
    may still be alive in this one."""
    run = subprocess.run([sys.executable, "-c", _BYSTANDER], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


WEIGHT_METHODS = sorted(m.name for m in petkit.core.registry.all_methods() if m.kind in ("weight", "output"))


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("method", WEIGHT_METHODS)
def test_every_weight_and_output_delta_method_under_gradient_checkpointing(family, method):
    """Each registered method of those kinds with its default config: outputs and gradients with
    checkpointing equal those without (issue 17: transformers.Trainer and TRL turn checkpointing on)."""
    config = next(m for m in petkit.core.registry.all_methods() if m.name == method).config
    try:
        plain = _adapted(family, method, None, config)
    except petkit.core.errors.TargetError as exc:
        pytest.skip(f"{method} refuses {family}: {exc}")
    checkpointed = _adapted(family, method, "after", config)
    batch = tiny_batch(plain, seed=3)
    logits, grads = _step(plain, batch)
    logits_ckpt, grads_ckpt = _step(checkpointed, batch)
    torch.testing.assert_close(logits_ckpt, logits, rtol=0, atol=1e-6)
    assert grads_ckpt.keys() == grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)
