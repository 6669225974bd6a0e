"""Low-bit frozen bases (petkit/quant): formats and packing, PackedLinear's autograd function,
petkit.quantize, adapters trained on top, merging by re-quantising, and (test_quant_storage.py)
fingerprints, save/load and PEFT interop.

Each test's docstring (or comment) names the bug it is there to catch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import petkit
from petkit.core.layer import AdaptedLayer
from petkit.core.module_types import Conv1D
from petkit.core.targeting import resolve_targets
from petkit.quant import NF4, PackedLinear, QuantFormat, formats, quantized_layers
from petkit.quant.linear import PackedLinearFn
from petkit.testing import tiny_batch, tiny_bert, tiny_llama
from quant_cases import (
    G,
    MAKERS,
    assert_packed_equal,
    assert_same_state,
    copy_trainable,
    dequantized_copy,
    gaussian,
    layer,
    logits,
    noisy,
    packed_state,
    rel,
    state,
)

pytestmark = pytest.mark.filterwarnings("ignore:torch.searchsorted")  # NF4 on GPT-2's transposed Conv1D weights


# -- 1. formats --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("in_f", [1, 7, 13, 24])
def test_pack_unpack_round_trip(bits, in_f):
    """Bug: a packing that drops or mixes codes, mishandles a row whose bits do not fill whole bytes
    (odd in_features, 3 bits straddling bytes) or pads rows to the wrong number of bytes."""
    codes = torch.randint(0, 2 ** bits, (5, in_f), generator=torch.Generator().manual_seed(bits * 100 + in_f),
                          dtype=torch.uint8)
    packed = formats.pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, -(-in_f * bits // 8))
    assert torch.equal(formats.unpack(packed, bits, in_f), codes)


def test_packed_bit_order_is_documented_little_endian():
    """Bug: nibbles / crumbs / bits swapped inside a byte (the order is part of the file format:
    a swap in pack and unpack together round-trips but breaks every saved model)."""
    assert formats.pack(torch.tensor([[1, 2]], dtype=torch.uint8), 4).tolist() == [[0x21]]
    assert formats.pack(torch.tensor([[1, 2, 3, 0]], dtype=torch.uint8), 2).tolist() == [[0b00111001]]
    assert formats.pack(torch.tensor([[1, 0, 0, 0, 0, 0, 0, 1, 1]], dtype=torch.uint8), 1).tolist() == [[0x81, 0x01]]
    # 3 bits: codes 5 (101), 3 (011), 7 (111) -> stream 101 110 111 (LSB first) = 0b11_011_101, 0b1
    assert formats.pack(torch.tensor([[5, 3, 7]], dtype=torch.uint8), 3).tolist() == [[0b11011101, 0b1]]
    assert formats.unpack(torch.tensor([[0x21]], dtype=torch.uint8), 4, 2).tolist() == [[1, 2]]
    assert formats.unpack(torch.tensor([[0b11011101, 0b1]], dtype=torch.uint8), 3, 3).tolist() == [[5, 3, 7]]


def test_nf4_codes_are_nearest_levels():
    """Bug: NF4 rounding by wrong thresholds (off-by-one bucket, levels not scaled by the group's
    absmax), or a dequantisation that reads the wrong level."""
    w = gaussian(8, 64, seed=3)
    codes, absmax, zeros = formats.quantize_weight(w, "nf4", 4, G)
    assert zeros is None
    groups = w.view(8, 4, G)
    torch.testing.assert_close(absmax, groups.abs().amax(-1), rtol=0, atol=0)
    nearest = ((groups / absmax[..., None])[..., None] - NF4).abs().argmin(-1).view(8, 64)
    assert torch.equal(codes.long(), nearest)
    deq = formats.dequantize_codes(codes, absmax, None, "nf4")
    assert torch.equal(deq, (NF4[nearest].view(8, 4, G) * absmax[..., None]).view(8, 64))


def _int_error(w, bits):
    codes, scales, zeros = formats.quantize_weight(w, "int", bits, G)
    return formats.dequantize_codes(codes, scales, zeros, "int") - w


def test_int_error_falls_with_bits():
    """Bug: a scheme whose error does not shrink with more bits (wrong code range 2^b - 1, a clamp at
    the wrong top, codes truncated by the packing of one width)."""
    w = gaussian(32, 128, seed=1)
    err = {b: float(_int_error(w, b).norm() / w.norm()) for b in (1, 2, 3, 4, 8)}
    assert err[8] < err[4] < err[3] < err[2] < err[1], err
    assert err[8] < 0.01 and err[4] < 0.15 and err[1] < 1.0, err


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_int_refit_never_worse_than_round_to_nearest(bits):
    """Bug: a least-squares refit that replaces a group's fit by a worse one (keeping the last
    iterate instead of the best, or comparing errors on unrounded fp32 statistics), or one that
    does nothing at low bits."""
    w = gaussian(64, 64, seed=bits)
    top = 2 ** bits - 1
    g = w.view(64, -1, G)
    lo, hi = g.amin(-1), g.amax(-1)
    scale, zero = ((hi - lo) / top).half().float(), lo.half().float()  # as stored: fp16 statistics
    q = ((g - zero[..., None]) / scale[..., None]).round().clamp(0, top)
    baseline = (q * scale[..., None] + zero[..., None] - g).square().sum(-1)
    fitted = _int_error(w, bits).view(64, -1, G).square().sum(-1)
    assert bool((fitted <= baseline * (1 + 1e-6) + 1e-12).all()), (fitted - baseline).max()
    if bits <= 2:  # the refit must actually help where min/max rounding is poor
        assert float(fitted.sum()) < 0.9 * float(baseline.sum())


@pytest.mark.parametrize("scheme,bits", [("int", 1), ("int", 2), ("int", 3), ("int", 4), ("int", 8), ("nf4", 4)])
def test_constant_groups_dequantise_exactly(scheme, bits):
    """Bug: a zero scale for a constant group (division by zero: NaN codes) or a zero point that is
    dropped in dequantisation (the constant comes back as 0)."""
    w = gaussian(4, 4 * G, seed=5)
    values = torch.tensor([0.0, 0.5, -1.25, 3.0])  # fp16-representable: int keeps fp16 statistics
    w[:, :G] = values[:, None]  # group 0 of every row is constant
    w[0, G:2 * G] = -2.0
    codes, scales, zeros = formats.quantize_weight(w, scheme, bits, G)
    deq = formats.dequantize_codes(codes, scales, zeros, scheme)
    assert torch.isfinite(deq).all()
    assert torch.equal(deq[:, :G], w[:, :G])
    assert torch.equal(deq[0, G:2 * G], w[0, G:2 * G])


@pytest.mark.parametrize("scheme,bits,stat", [("int", 2, torch.float16), ("int", 8, torch.float16),
                                              ("nf4", 4, torch.float32)])
def test_statistics_dtypes(scheme, bits, stat):
    """Bug: statistics kept in another dtype than the format promises (GGUF-style fp16 for int,
    bitsandbytes' fp32 absmax for nf4), which changes both file size and the exact dequantised values."""
    codes, scales, zeros = formats.quantize_weight(gaussian(4, 32), scheme, bits, G)
    assert codes.dtype == torch.uint8 and scales.dtype == stat and scales.shape == (4, 2)
    assert (zeros is None) == (scheme == "nf4") and (zeros is None or zeros.dtype == stat)
    lay = layer(32, 4, QuantFormat(scheme, bits, G))
    assert lay.scales.dtype == stat and (lay.zeros is None or lay.zeros.dtype == stat)
    assert lay.codes.shape == (4, formats.packed_row_bytes(32, bits))


def test_nf4_matches_bitsandbytes():
    """Bug: NF4 codes or dequantised values that differ from bitsandbytes' for the same block size."""
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        pytest.skip("bitsandbytes is not installed: the NF4 comparison with its quantize_4bit cannot run")
    w = gaussian(8, 64, seed=2)
    packed, qs = bnbf.quantize_4bit(w, quant_type="nf4", blocksize=64)
    want = bnbf.dequantize_4bit(packed, qs, quant_type="nf4", blocksize=64)
    codes, absmax, _ = formats.quantize_weight(w, "nf4", 4, 64)
    torch.testing.assert_close(formats.dequantize_codes(codes, absmax, None, "nf4"), want.float().view(8, 64))


# -- 2. PackedLinear -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [QuantFormat("int", 3, G), QuantFormat("int", 8, G), QuantFormat("nf4", 4, G)])
def test_forward_is_linear_with_the_dequantised_weight(fmt):
    """Bug: dequantisation in forward that differs from dequantize() (e.g. the zero point skipped,
    the bias dropped or scales of the wrong group), in float64 and float32."""
    lay = layer(48, 6, fmt)
    x = torch.randn(2, 3, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = lay.dequantize(torch.float64)
    torch.testing.assert_close(lay(x), F.linear(x, w, lay.bias.double()), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lay(x.float()), F.linear(x.float(), lay.dequantize(), lay.bias), rtol=1e-5, atol=1e-5)
    assert torch.equal(lay.weight, lay.dequantize())


def test_gradients_match_autograd_through_the_dequantised_weight():
    """Bug: a backward that uses another weight than forward (transposed, not dequantised, or the
    stale pre-merge one), a missing or mis-reduced bias gradient, or a gradient for the codes."""
    lay = layer(48, 6)
    lay.bias.requires_grad_(True)
    x = torch.randn(2, 3, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    g = torch.randn(2, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lay(x).backward(g)
    x_ref = x.detach().clone().requires_grad_(True)
    b_ref = lay.bias.detach().double().requires_grad_(True)
    F.linear(x_ref, lay.dequantize(torch.float64), b_ref).backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lay.bias.grad.double(), b_ref.grad, rtol=1e-6, atol=1e-6)
    assert [n for n, _ in lay.named_parameters()] == ["bias"]  # codes/scales/zeros are buffers
    assert not lay.codes.requires_grad and not lay.weight.requires_grad


def test_no_bias_gradient_unless_asked_and_frozen_bias_stays_frozen():
    """Bug: a bias gradient computed (or accumulated into .grad) for a frozen bias."""
    lay = layer(32, 4)
    x = torch.randn(3, 32, requires_grad=True)
    lay(x).sum().backward()
    assert lay.bias.grad is None and x.grad is not None


def test_gradcheck_float64():
    """Bug: any analytic gradient of the autograd function that disagrees with finite differences."""
    lay = layer(16, 3, QuantFormat("int", 2, 8))
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: PackedLinearFn.apply(x, lay, b), (x, b))
    assert torch.autograd.gradcheck(lambda x: PackedLinearFn.apply(x, lay, None), (x,))


def _saved_sizes(fn):
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sizes, out


def test_autograd_saves_no_float_weight():
    """Bug: the function saving the dequantised weight for backward (ctx.save_for_backward(w), or
    F.linear with the weight): the float weight kept alive per layer defeats the low-bit base."""
    lay = layer(32, 24)
    x = torch.randn(1, 5, 32, requires_grad=True)
    sizes, y = _saved_sizes(lambda: lay(x))
    y.sum().backward()
    assert 24 * 32 not in sizes, sizes


def test_adapted_quantised_model_saves_no_float_weight():
    """Bug: the fused single-LoRA path (F.linear with W + BA) running on a low-bit base, which
    saves a float weight per layer for backward."""
    q = petkit.quantize(tiny_llama(), bits=4, group_size=G)
    weight_sizes = {m.in_features * m.out_features for m in quantized_layers(q).values()}
    am = petkit.adapt(q, petkit.LoraConfig(r=2, targets=["q_proj", "v_proj", "down_proj"]))
    batch = tiny_batch(am, batch_size=3, seq_len=5)  # 15 tokens: no activation has a weight's size
    sizes, out = _saved_sizes(lambda: am(**batch).loss)
    out.backward()
    assert not weight_sizes & set(sizes), sorted(weight_sizes & set(sizes))


# -- 3. quantize() -----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", MAKERS)
def test_quantize_replaces_exactly_the_linear_layers(family):
    """Bug: the output head / task head quantised, a Conv1D or a linear layer left in float, or a
    new model returned instead of the same one changed in place."""
    float_model = MAKERS[family]()
    expected = resolve_targets(float_model, ["all-linear"])
    model = MAKERS[family]()
    assert petkit.quantize(model, bits=4, group_size=G) is model
    layers = quantized_layers(model)
    assert sorted(layers) == sorted(expected)
    left = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear,) + ((Conv1D,) if Conv1D else ()))]
    assert left == {"llama": ["lm_head"], "bert": ["classifier"], "gpt2": ["lm_head"]}[family]
    modules = dict(float_model.named_modules())
    for path, m in layers.items():  # logical shapes kept (Conv1D's (in, out) weight read as (out, in))
        src = modules[path]
        w = src.weight.t() if Conv1D and isinstance(src, Conv1D) else src.weight
        assert (m.out_features, m.in_features) == tuple(w.shape) and (m.bias is None) == (src.bias is None)


@pytest.mark.parametrize("family", MAKERS)
def test_quantised_outputs_close_to_float(family):
    """Bug: a quantised model that computes something else (Conv1D weight not transposed, bias lost,
    codes of another layer): its error must be small at 8 bits, moderate at 4 and grow at 2."""
    batch = tiny_batch(MAKERS[family]())
    want = logits(MAKERS[family](), batch)
    err = {(b, s): rel(logits(petkit.quantize(MAKERS[family](), bits=b, group_size=G, scheme=s), batch), want)
           for b, s in ((8, "int"), (4, "nf4"), (4, "int"), (2, "int"))}
    assert err[8, "int"] < 0.02 and err[4, "nf4"] < 0.25 and err[4, "int"] < 0.25 and err[2, "int"] < 0.8, err
    assert err[8, "int"] < err[4, "int"] < err[2, "int"], err


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=5), "bits"), (dict(bits=0), "bits"), (dict(bits=2, scheme="nf4"), "bits"),
    (dict(bits=4, scheme="fp4"), "scheme"), (dict(group_size=12), "group_size"), (dict(group_size=0), "group_size"),
    (dict(group_size=True), "group_size"), (dict(bits=4.0), "bits"), (dict(bits=True), "bits"),
    (dict(group_size=24), "does not divide"),
])
def test_bad_format_is_a_config_error_and_changes_nothing(kwargs, match):
    """Bug: a bad bits/scheme/group size accepted (or failing deep inside with a TypeError), or a
    partially quantised model left behind."""
    model = tiny_llama()
    before = state(model)
    with pytest.raises(petkit.ConfigError, match=match):
        petkit.quantize(model, **{"group_size": G, **kwargs})
    assert_same_state(model, before)
    assert not quantized_layers(model)


def test_refusals_leave_the_model_unchanged():
    """Bug: quantising twice (codes of codes), quantising under adapters (the adapter's base
    swapped underneath it), quantising a tied embedding (the embedding changed too) or a wrong
    target name accepted silently — and any of them changing the model before failing."""
    q = petkit.quantize(tiny_llama(), bits=4, group_size=G)
    before = state(q)
    with pytest.raises(petkit.StateError, match="already quantised"):
        petkit.quantize(q, bits=4, group_size=G)
    assert_same_state(q, before)

    am = petkit.adapt(tiny_llama(), petkit.LoraConfig(r=2, targets=["q_proj"]))
    before = state(am)
    with pytest.raises(petkit.StateError, match="adapters"):
        petkit.quantize(am, bits=4, group_size=G)
    assert_same_state(am, before)

    for targets, error in ((["lm_head"], petkit.TargetError), (["q_proj", "lm_head"], petkit.TargetError),
                           (["no_such_proj"], petkit.TargetError)):
        model = tiny_llama()
        before = state(model)
        with pytest.raises(error):
            petkit.quantize(model, bits=4, group_size=G, targets=targets)
        assert_same_state(model, before)
        assert not quantized_layers(model) and model.lm_head.weight is model.model.embed_tokens.weight


def test_targets_and_exclude():
    """Bug: targets/exclude ignored (everything quantised anyway)."""
    model = petkit.quantize(tiny_llama(), bits=4, group_size=G, targets=["mlp.in"], exclude=[r"re:.*layers\.1\..*"])
    assert sorted(quantized_layers(model)) == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]


# -- 4. methods on a quantised base ------------------------------------------------------------------

METHOD_CONFIGS = {
    "lora": lambda: petkit.LoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"]),
    "dora": lambda: petkit.DoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj"]),
    "ia3": lambda: petkit.IA3Config(targets=["k_proj", "v_proj", "down_proj"], feedforward=["down_proj"]),
    "miss": lambda: petkit.MissConfig(r=4, targets=["q_proj", "v_proj"]),
    "bottleneck": lambda: petkit.BottleneckConfig(variant="pfeiffer", bottleneck=8),
}


@pytest.mark.parametrize("method", METHOD_CONFIGS)
def test_methods_train_on_a_quantised_base(method):
    """Bug: an adapter that cannot train on a low-bit base (no gradient reaching it through
    PackedLinearFn), or training that changes the base (codes, scales, biases, norms)."""
    q = petkit.quantize(tiny_llama(), bits=4, group_size=G)
    torch.manual_seed(0)
    am = petkit.adapt(q, METHOD_CONFIGS[method]())
    am.train()
    batch = tiny_batch(am)
    trainable = {n for n, p in am.named_parameters() if p.requires_grad}
    assert trainable
    before = state(am)
    opt = torch.optim.Adam(am.trainable_parameters(), lr=2e-2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = am(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses
    now = am.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(now[k], v)}
    params = dict(am.named_parameters())
    assert changed and changed <= trainable, sorted(changed - trainable)[:3]
    assert all(k in params for k in changed)


@pytest.mark.parametrize("family,config", [
    ("llama", lambda: petkit.LoraConfig(r=4, alpha=8, dropout=0.3, targets=["q_proj", "v_proj", "down_proj"])),
    ("bert", lambda: petkit.LoraConfig(r=4, alpha=8, dropout=0.3, targets=["query", "value", "output.dense"])),
    ("gpt2", lambda: petkit.LoraConfig(r=4, alpha=8, dropout=0.3, targets=["c_attn", "mlp.c_proj"])),
    ("llama", lambda: petkit.DoraConfig(r=4, alpha=8, dropout=0.3, targets=["q_proj", "v_proj"])),
    ("bert", lambda: petkit.IA3Config(targets=["key", "value", "output.dense"], feedforward=["output.dense"])),
])
def test_training_matches_a_float_model_with_the_dequantised_weights(family, config):
    """Bug: a quantised forward/backward in training mode that is not the float computation with
    the dequantised weights: dropout drawn differently (another RNG order than the float path),
    adapter gradients scaled or missing, a Conv1D weight used untransposed."""
    make = MAKERS[family]
    q = petkit.quantize(make(dropout=0.1), bits=4, group_size=G)
    ref = dequantized_copy(make, q, dropout=0.1)
    am_q, am_f = petkit.adapt(q, config()), petkit.adapt(ref, config())
    noisy(am_q)
    copy_trainable(am_q, am_f)
    batch = tiny_batch(am_q)
    outs = []
    for am in (am_q, am_f):
        am.train()
        torch.manual_seed(123)
        out = am(**batch)
        out.loss.backward()
        outs.append((out.logits.detach(), {n: p.grad for n, p in am.named_parameters() if p.requires_grad}))
    (yq, gq), (yf, gf) = outs
    torch.testing.assert_close(yq, yf, rtol=1e-4, atol=1e-5)
    assert gq.keys() == gf.keys() and all(g is not None for g in gq.values())
    for n in gq:
        torch.testing.assert_close(gq[n], gf[n], rtol=1e-3, atol=1e-5, msg=n)
    with torch.no_grad():  # dropout really ran: two training forwards differ
        assert not torch.equal(am_q(**batch).logits, am_q(**batch).logits)


def test_gradient_accumulation_equals_the_full_batch():
    """Bug: state kept between forwards of a low-bit layer (e.g. a cached weight or input from
    the previous micro-batch used in backward)."""
    q = petkit.quantize(tiny_bert(dropout=0.0), bits=4, group_size=G)
    am = petkit.adapt(q, petkit.LoraConfig(r=4, targets=["query", "value"]))
    noisy(am)
    am.train()
    batch = tiny_batch(am)
    params = am.trainable_parameters()
    am(**batch).loss.backward()
    full = [p.grad.clone() for p in params]
    am.zero_grad()
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    outs = [am(**h) for h in halves]  # both forwards before either backward
    for out in outs:
        (out.loss / 2).backward()
    for p, want in zip(params, full):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6)


# -- 5. merging into a low-bit base ------------------------------------------------------------------

def _adapted(family="llama", config=None, bits=8, scheme="int", std=0.2):
    make = MAKERS[family]
    q = petkit.quantize(make(), bits=bits, group_size=G, scheme=scheme)
    config = config or petkit.LoraConfig(r=4, alpha=8, targets={"llama": ["q_proj", "v_proj", "down_proj"],
                                                                "bert": ["query", "value"],
                                                                "gpt2": ["c_attn", "mlp.c_proj"]}[family])
    am = petkit.adapt(q, config)
    noisy(am, std=std)
    return am, tiny_batch(am)


def test_merge_is_refused_without_requantize():
    """Bug: a silent lossy merge into a low-bit base, or a refusal after some layers were merged."""
    am, batch = _adapted()
    before, packed, want = state(am), packed_state(am), logits(am, batch)
    with pytest.raises(petkit.StateError, match="requantize=True"):
        am.merge()
    with pytest.raises(petkit.StateError, match="requantize=True"):
        am.merge_and_unload()
    assert_same_state(am, before)
    assert_packed_equal(am, packed)
    assert am.state.merged == [] and am.merge_errors == {}
    assert torch.equal(logits(am, batch), want)


def test_merge_of_several_adapters_is_refused_before_any_merges():
    """Bug: merge(["a", "b"]) merging a (on float layers) before refusing b (on low-bit layers),
    leaving a merged behind a refused call."""
    q = petkit.quantize(MAKERS["llama"](), bits=4, group_size=G, exclude=["q_proj"])
    am = petkit.adapt(q, petkit.LoraConfig(r=2, targets=["q_proj"]), "a")
    am.add(petkit.LoraConfig(r=2, targets=["v_proj"]), "b")
    noisy(am, "a"), noisy(am, "b")
    before = state(am)
    with pytest.raises(petkit.StateError, match="'b'"):
        am.merge(["a", "b"])
    assert am.state.merged == [] and am.merge_errors == {}
    assert_same_state(am, before)


@pytest.mark.parametrize("family", MAKERS)
def test_requantized_merge_reports_errors_and_unmerge_is_exact(family):
    """Bug: merge_errors not filled (or not cleared by unmerge), no warning, the delta dropped
    instead of merged, or an unmerge that re-quantises (W + ΔW) − ΔW instead of restoring the codes."""
    am, batch = _adapted(family, std=1.0 if family == "bert" else 0.2)  # BERT's pooled logits move little
    packed, adapted = packed_state(am), logits(am, batch)
    with am.disabled():
        plain = logits(am, batch)
    assert rel(plain, adapted) > 0.05
    with pytest.warns(UserWarning, match="re-quantising"):
        am.merge(requantize=True)
    paths = [p for p, lay, _ in am.layers("default") if isinstance(lay.base_layer, PackedLinear)]
    assert paths
    assert sorted(am.merge_errors) == sorted(f"default:{p}" for p in paths)
    for r in am.merge_errors.values():
        assert 0 < r.weight_error < 0.05 and 0 < r.delta_error < 1, r
    merged = logits(am, batch)
    assert rel(merged, adapted) < 0.1 * rel(plain, adapted)
    am.unmerge()
    assert am.merge_errors == {} and am.state.merged == []
    assert_packed_equal(am, packed)
    assert torch.equal(logits(am, batch), adapted)


@pytest.mark.parametrize("method", ["dora", "ia3"])
def test_dora_and_ia3_merge_unmerge_on_a_quantised_base(method):
    """Bug: DoRA's norm or IA³'s output scaling (which also scales the bias) merged into a low-bit
    base wrongly, or the bias not restored on unmerge."""
    config = {"dora": petkit.DoraConfig(r=4, alpha=8, targets=["query", "value"]),
              "ia3": petkit.IA3Config(targets=["key", "value", "output.dense"], feedforward=["output.dense"])}[method]
    am, batch = _adapted("bert", config)
    packed, adapted, before = packed_state(am), logits(am, batch), state(am)
    with pytest.warns(UserWarning):
        am.merge(requantize=True)
    if method == "ia3":  # the output scaling touched the biases of key/value
        biases = [k for k in before if k.endswith("key.base_layer.bias") or k.endswith("value.base_layer.bias")]
        assert biases and any(not torch.equal(am.state_dict()[k], before[k]) for k in biases)
    assert rel(logits(am, batch), adapted) < 0.02
    am.unmerge()
    assert_packed_equal(am, packed)
    now = am.state_dict()
    for k, v in before.items():
        torch.testing.assert_close(now[k], v, rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(logits(am, batch), adapted, rtol=1e-5, atol=1e-5)


def test_merge_and_unload_requantize_returns_a_plain_low_bit_model():
    """Bug: wrappers left behind, the low-bit layers replaced by float ones, or the adapter lost."""
    am, batch = _adapted("gpt2")
    adapted = logits(am, batch)
    n_layers = len(quantized_layers(am))
    with pytest.warns(UserWarning, match="re-quantising"):
        model = am.merge_and_unload(requantize=True)
    assert not any(isinstance(m, AdaptedLayer) for m in model.modules())
    assert len(quantized_layers(model)) == n_layers
    assert all(isinstance(m, PackedLinear) for m in quantized_layers(model).values())
    assert rel(logits(model, batch), adapted) < 0.02
