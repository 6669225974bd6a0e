"""A low-bit base run through the T-MAC lookup-table kernel (petkit.quant.use_lut), with and without
adapters on top, against the same base run by dequantising (the reference)."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.core.errors import ConfigError
from petkit.kernels.lut import native
from petkit.quant import PackedLinear, quantized_layers, use_lut
from quant_cases import assert_same_state, build, logits, rel, state

BATCH = {"input_ids": torch.tensor([[1, 5, 9, 3, 7, 2], [4, 4, 8, 1, 0, 6]])}
# int8 activation tables cost ~1 % per layer (T-MAC's own NMSE bound is 5e-4 per product); two blocks
# and a head compound it to 2-4 % of the logits
LUT_TOLERANCE = 5e-2


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)  # the adapters' random factors: the same whatever ran before


def lut_model(bits, seed=0, embeddings=True):
    model = build("llama", seed=seed).eval()  # its embedding and head are tied
    return petkit.quantize(model, bits=bits, scheme="int", group_size=16, embeddings=embeddings)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_lut_forward_matches_dequantised_forward(bits):
    """Catches a wrong mapping of petkit's int codes (w = s·q + z) onto the kernel's (w = s·(q − 2^(b−1)) + z'),
    a layer left out, or a tied head that the kernel reads with the wrong buffers."""
    model = lut_model(bits)
    reference = logits(model, BATCH)
    switched = use_lut(model)
    assert "lm_head" in switched and len(switched) == 2 * 7 + 1  # 2 blocks × 7 linears + the tied head
    assert rel(logits(model, BATCH), reference) < LUT_TOLERANCE


def test_lut_uses_the_native_kernel_when_it_builds(monkeypatch):
    """Catches a path that silently stays on the slow reference (or on dequantising) when the kernel is there."""
    if not native.available():
        pytest.skip("the native LUT kernel cannot be built here (no compiler or ninja)")
    calls = []
    from petkit.kernels import lut as lut_pkg
    real = lut_pkg.lut_matmul
    monkeypatch.setattr(lut_pkg, "lut_matmul", lambda x, w, **kw: calls.append(kw.get("backend", "auto")) or real(x, w, **kw))
    model = lut_model(2)
    use_lut(model)
    logits(model, BATCH)
    assert len(calls) == 2 * 7 + 1 and set(calls) == {"auto"}


def test_lora_on_a_lut_base_runs_unmerged_on_top_of_the_kernel():
    """The base through the kernel, the LoRA delta on top: equal to the dequantised reference; catches a
    delta dropped on the LUT path or a fused path that bypasses the base layer's forward."""
    model = lut_model(2, embeddings=False)
    am = petkit.adapt(model, petkit.LoraConfig(r=4, targets="all-linear"))
    with torch.no_grad():
        for name, p in am.named_parameters():
            if ".lora" in name or name.endswith((".A", ".B")):
                p.normal_(0, 0.2)
    reference = logits(am, BATCH)
    use_lut(model)
    lut = logits(am, BATCH)
    with am.disabled():
        base_only = logits(am, BATCH)
    assert rel(lut, reference) < LUT_TOLERANCE
    assert rel(base_only, reference) > 10 * LUT_TOLERANCE  # the adapter really changes the output


def test_training_forwards_keep_the_exact_dequantised_path():
    """The kernel has no backward: a forward that needs gradients must not go through it (catches a LUT
    forward in training, which would give no input gradient or a wrong one)."""
    model = lut_model(2, embeddings=False)
    am = petkit.adapt(model, petkit.LoraConfig(r=4, targets="all-linear"))
    am.train()

    def grads():
        am.zero_grad()
        am(**BATCH, labels=BATCH["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in am.named_parameters() if p.requires_grad}

    plain = grads()
    use_lut(model)
    with_lut = grads()
    assert plain.keys() == with_lut.keys() and all(torch.equal(plain[n], with_lut[n]) for n in plain)


def test_lut_leaves_the_state_dict_alone_and_follows_merges():
    """No side effects on state_dict (the bitsandbytes trap: an eval forward repacking weights in place),
    and a merge that re-quantises the codes is what the kernel reads next (a stale table would not be)."""
    model = lut_model(4, embeddings=False)
    before = state(model)
    use_lut(model)
    logits(model, BATCH)
    assert_same_state(model, before)
    base_lut = logits(model, BATCH)
    am = petkit.adapt(model, petkit.LoraConfig(r=4, targets="all-linear"))
    with torch.no_grad():
        for p in am.parameters():
            if p.requires_grad:
                p.normal_(0, 0.15)
    with pytest.warns(UserWarning, match="re-quantising"):
        am.merge(requantize=True)
    merged = logits(am, BATCH)
    use_lut(model, False)
    merged_reference = logits(am, BATCH)
    assert rel(merged, merged_reference) < LUT_TOLERANCE
    assert rel(merged, base_lut) > 4 * LUT_TOLERANCE  # a stale table would still give the base's output


def test_lut_refuses_layers_it_cannot_take():
    model = petkit.quantize(build("llama").eval(), bits=4, group_size=16)  # NF4
    with pytest.raises(ConfigError, match="int scheme at 1–4 bits"):
        use_lut(model)
    layer = next(iter(quantized_layers(model).values()))
    assert isinstance(layer, PackedLinear)
    with pytest.raises(ValueError, match="int scheme at 1–4 bits"):
        layer.use_lut()
    eight = petkit.quantize(build("llama").eval(), bits=8, scheme="int", group_size=16)
    with pytest.raises(ConfigError):
        use_lut(eight)
