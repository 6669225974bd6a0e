"""Low-bit adapters (petkit/methods/lowbit.py, quantize.py): codebooks, the straight-through estimator,
bit packing, bytes on disk, exact reloads, merging, post-training quantisation and bad input."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import petkit
from petkit.kernels import quantize as qz
from petkit.methods.lowbit import (
    LowbitAdapterConfig,
    LowbitLoraConfig,
    quantize_adapter,
)
from petkit.testing import tiny_batch, tiny_bert, tiny_gpt2


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _tensor_bytes(path):
    """(data bytes, {name: dtype}) of a safetensors file: its size minus the 8-byte length and the JSON header."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    dtypes = {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return len(raw) - 8 - header_len, dtypes


def _reference_quantize(w, bits, kind):
    """Dequantised weight by hand: standardise, nearest level (argmin, not thresholds), de-standardise."""
    levels, _ = qz.gaussian_codebook(bits, kind)
    mu, s = w.mean(), w.std()
    z = (w - mu) / (s + 1e-5)
    nearest = (z[..., None] - levels.float()).abs().argmin(-1)
    return levels.float()[nearest] * s + mu


# -- codebooks ---------------------------------------------------------------------------------------

def test_one_bit_codebooks():
    levels, thresholds = qz.gaussian_codebook(1, "lloyd-max")
    torch.testing.assert_close(levels, torch.tensor([-1.0, 1.0], dtype=torch.float64) * math.sqrt(2 / math.pi))
    assert thresholds.tolist() == [0.0]
    levels, _ = qz.gaussian_codebook(1, "median")  # the median of the half-normal: Φ⁻¹(3/4)
    torch.testing.assert_close(levels, torch.tensor([-0.6744897501960817, 0.6744897501960817], dtype=torch.float64))


def test_two_and_four_bit_codebooks_match_published_tables():
    # Lloyd–Max for N(0, 1) (Max 1960): levels ±0.4528, ±1.5104; thresholds 0, ±0.9816
    levels, thresholds = qz.gaussian_codebook(2, "lloyd-max")
    torch.testing.assert_close(levels.float(), torch.tensor([-1.5104, -0.4528, 0.4528, 1.5104]), atol=1e-4, rtol=0)
    torch.testing.assert_close(thresholds.float(), torch.tensor([-0.9816, 0.0, 0.9816]), atol=1e-4, rtol=0)
    # cell medians, the official code's codebook (spec §4): ±0.3778, ±1.2657; thresholds 0, ±0.8217
    levels, thresholds = qz.gaussian_codebook(2, "median")
    torch.testing.assert_close(levels.float(), torch.tensor([-1.2657, -0.3778, 0.3778, 1.2657]), atol=1e-4, rtol=0)
    torch.testing.assert_close(thresholds.float(), torch.tensor([-0.8217, 0.0, 0.8217]), atol=1e-4, rtol=0)
    top = qz.gaussian_codebook(4, "lloyd-max")[0][-4:]  # Max's 16-level table
    torch.testing.assert_close(top.float(), torch.tensor([1.2562, 1.6180, 2.0690, 2.7326]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("bits", qz.BITS)
def test_codebooks_are_fixed_points(bits):
    """Every level is its cell's conditional mean (Lloyd–Max) or probability median, checked in plain
    float64 math (erf, exp), independently of the solver's torch code."""
    def cdf(x):
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def pdf(x):
        return math.exp(-x * x / 2) / math.sqrt(2 * math.pi) if math.isfinite(x) else 0.0

    for kind in qz.CODEBOOKS:
        levels, thresholds = qz.gaussian_codebook(bits, kind)
        assert len(levels) == 2 ** bits and bool((levels[1:] > levels[:-1]).all())
        torch.testing.assert_close(thresholds, (levels[1:] + levels[:-1]) / 2)
        torch.testing.assert_close(levels, -levels.flip(0))
        edges = [-math.inf, *thresholds.tolist(), math.inf]
        for i, level in enumerate(levels.tolist()):
            a, b = edges[i], edges[i + 1]
            if kind == "lloyd-max":
                assert level == pytest.approx((pdf(a) - pdf(b)) / (cdf(b) - cdf(a)), abs=1e-8)
            else:
                assert cdf(level) - cdf(a) == pytest.approx(cdf(b) - cdf(level), rel=1e-8)


def test_lloyd_max_has_lower_error_than_medians_on_gaussian_weights():
    w = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    for bits in (2, 4):
        errors = {kind: (_reference_quantize(w, bits, kind) - w).pow(2).mean() for kind in qz.CODEBOOKS}
        assert errors["lloyd-max"] < errors["median"]


# -- straight-through estimator ---------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 8])
def test_fake_quantize_forward_and_straight_through_gradient(bits):
    g = torch.Generator().manual_seed(bits)
    w = (torch.randn(16, 24, generator=g) * 0.3 + 0.1).requires_grad_(True)
    levels, thresholds = (t.float() for t in qz.gaussian_codebook(bits, "lloyd-max"))
    out = qz.fake_quantize(w, levels, thresholds)
    torch.testing.assert_close(out, _reference_quantize(w.detach(), bits, "lloyd-max"), atol=1e-6, rtol=0)
    upstream = torch.randn(w.shape, generator=g)
    (out * upstream).sum().backward()
    # f = (q + z − sg(z))·σ + μ, z = (w − μ)/σ: d/dw Σ g·f = g + (Σ g·(q − z))·∂σ/∂w (up to O(ε)),
    # the identity for the rounding plus the true gradient of the statistics
    wd = w.detach()
    z = (wd - wd.mean()) / wd.std()
    q = levels[torch.bucketize(z, thresholds)]
    dsigma = (wd - wd.mean()) / ((wd.numel() - 1) * wd.std())
    expected = upstream + (upstream * (q - z)).sum() * dsigma
    torch.testing.assert_close(w.grad, expected, atol=1e-3, rtol=1e-3)
    assert w.grad.abs().min() > 0  # a plain rounding would pass no gradient to most weights


# -- packing ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", qz.BITS)
@pytest.mark.parametrize("numel", [1, 3, 7, 13, 255, 1001])
def test_pack_unpack_round_trip_is_exact(bits, numel):
    codes = torch.randint(0, 2 ** bits, (numel,), generator=torch.Generator().manual_seed(numel))
    packed = qz.pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel * bits / 8) == qz.packed_size(numel, bits)
    assert torch.equal(qz.unpack(packed, bits, numel), codes)


def test_pack_layout_puts_the_first_code_in_the_lowest_bits():
    assert qz.pack(torch.tensor([1, 0, 1, 1, 0, 0, 0, 1]), 1).tolist() == [0b10001101]
    assert qz.pack(torch.tensor([3, 0, 1, 2, 1]), 2).tolist() == [0b10010011, 0b00000001]
    assert qz.pack(torch.tensor([15, 2]), 4).tolist() == [0x2F]


# -- the adapters' math -------------------------------------------------------------------------------

def _one_layer_model(base):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = base

        def forward(self, x):
            return self.proj(x)
    return M()


@pytest.mark.parametrize("bits,codebook", [(1, "lloyd-max"), (2, "median"), (4, "lloyd-max"), (32, "lloyd-max")])
def test_lowbit_lora_forward_and_merge_against_dense_reference(bits, codebook):
    torch.manual_seed(0)
    model = _one_layer_model(nn.Linear(12, 10))
    cfg = LowbitLoraConfig(bits=bits, codebook=codebook, r=3, scale=0.7, dropout=0.0, targets=["proj"])
    am = petkit.adapt(model, cfg)
    delta = am.layer("proj").deltas["default"]
    with torch.no_grad():
        delta.up.weight.normal_()  # as if trained
    x = torch.randn(5, 12)
    quant = (lambda w: w) if bits == 32 else (lambda w: _reference_quantize(w, bits, codebook))
    dW = 0.7 * quant(delta.up.weight.detach()) @ quant(delta.down.weight.detach())
    expected = F.linear(x, model.proj.base_layer.weight + dW, model.proj.base_layer.bias)
    with torch.no_grad():
        torch.testing.assert_close(am(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(delta.delta_weight(model.proj.base_layer), dW, atol=1e-6, rtol=1e-6)
        am.merge()
        torch.testing.assert_close(am(x), expected, atol=1e-5, rtol=1e-5)
        am.unmerge()


def test_lowbit_adapter_reads_the_block_input_through_a_relu_bottleneck():
    torch.manual_seed(0)
    base = tiny_bert()
    am = petkit.adapt(base, LowbitAdapterConfig(bits=2, r=4, scale=0.5, dropout=0.0))  # default target mlp.out
    layer = am.layer("bert.encoder.layer.0.output.dense")
    delta = layer.deltas["default"]
    with torch.no_grad():
        delta.up.weight.normal_()
    seen = {}
    intermediate = base.bert.encoder.layer[0].intermediate.dense  # mlp.in reads the FFN block input
    hooks = [intermediate.register_forward_pre_hook(lambda m, a: seen.__setitem__("h", a[0])),
             layer.register_forward_hook(lambda m, a, out: seen.__setitem__("y", out)),
             layer.base_layer.register_forward_hook(lambda m, a, out: seen.__setitem__("y0", out))]
    _logits(am, tiny_batch(base))
    for h in hooks:
        h.remove()
    down, up = (_reference_quantize(q.weight.detach(), 2, "lloyd-max") for q in (delta.down, delta.up))
    expected = seen["y0"] + 0.5 * F.relu(seen["h"] @ down.t()) @ up.t()
    torch.testing.assert_close(seen["y"], expected, atol=1e-5, rtol=1e-5)
    assert delta.delta_weight(layer.base_layer) is None
    with pytest.raises(petkit.StateError, match="cannot be merged"):
        am.merge()


def test_mixed_adapter_batch_routes_each_sample():
    torch.manual_seed(0)
    base = tiny_bert()
    am = petkit.adapt(base, LowbitAdapterConfig(bits=1, r=4, scale=1.0), "a")
    am.add(LowbitLoraConfig(bits=2, r=4, targets=["attn.q", "mlp.out"]), "b")
    batch = tiny_batch(base)
    with torch.no_grad():
        for name in ("a", "b"):
            for _, _, d in am.layers(name):
                if hasattr(d, "up"):
                    d.up.weight.normal_(std=0.1)
    single = {}
    for name in ("a", "b"):
        am.set_active(name)
        single[name] = _logits(am, batch)
    with torch.no_grad(), am.disabled():
        single[None] = am(**batch).logits
    names = ["b", "a", None, "a"]
    with torch.no_grad():
        mixed = am(**batch, adapter_names=names).logits
    for i, n in enumerate(names):
        torch.testing.assert_close(mixed[i], single[n][i], atol=1e-5, rtol=1e-5)


def test_init_full_precision_is_identity_and_quantised_up_is_tiny():
    fp = petkit.adapt(tiny_bert(), LowbitLoraConfig(bits=32, r=4, targets=["attn.q"]))
    q = petkit.adapt(tiny_bert(), LowbitLoraConfig(bits=1, r=4, targets=["attn.q"]))
    for (_, _, d_fp), (_, _, d_q) in zip(fp.layers("default"), q.layers("default")):
        if not hasattr(d_fp, "up"):
            continue  # the task head
        assert torch.count_nonzero(d_fp.up.weight) == 0
        up = d_q.up.weight
        assert torch.count_nonzero(up) == up.numel() and up.abs().max() <= 0.002
        bound = 1 / math.sqrt(d_q.down.weight.shape[1])  # kaiming-uniform(a=√5) = U(±1/sqrt(in))
        assert d_q.down.weight.abs().max() <= bound and d_q.down.weight.abs().max() > bound / 2


# -- on disk -----------------------------------------------------------------------------------------

def _adapted(bits, r=8, seed=0):
    torch.manual_seed(seed)
    am = petkit.adapt(tiny_bert(), LowbitLoraConfig(bits=bits, r=r, targets=["attn.q", "attn.v"], train_head=False))
    with torch.no_grad():
        for _, _, d in am.layers("default"):
            d.up.weight.normal_(std=0.1)  # as if trained
    return am


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_adapter_file_holds_packed_codes_and_is_bits_over_32_of_fp32(bits, tmp_path):
    r, d, modules = 8, 32, 4  # attn.q and attn.v of 2 layers, 32 → 32
    am, twin = _adapted(bits), _adapted(32)
    am.save(tmp_path / "q")
    twin.save(tmp_path / "fp")
    data, dtypes = _tensor_bytes(tmp_path / "q" / "adapter_model.safetensors")
    fp_data, fp_dtypes = _tensor_bytes(tmp_path / "fp" / "adapter_model.safetensors")
    per_projection = math.ceil(r * d * bits / 8) + 8  # packed codes + float32 [μ, s]
    assert data == modules * 2 * per_projection
    assert fp_data == modules * 2 * r * d * 4
    assert {v for k, v in dtypes.items() if k.endswith(".codes")} == {"U8"}
    assert {v for k, v in dtypes.items() if k.endswith(".stats")} == {"F32"} and set(fp_dtypes.values()) == {"F32"}
    assert fp_data / data == pytest.approx(32 * r * d / (r * d * bits + 64))
    if bits == 1:
        assert fp_data / data >= 25


def test_reload_reproduces_the_quantised_adapter_exactly_until_it_trains(tmp_path):
    am = _adapted(2)
    batch = tiny_batch(am.base)
    y = _logits(am, batch)
    am.save(tmp_path / "a")
    loaded = petkit.load(tiny_bert(), tmp_path / "a", trainable=True)
    assert torch.equal(_logits(loaded, batch), y)
    loaded.save(tmp_path / "b")  # saving the loaded adapter writes the same codes and statistics
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == (tmp_path / "b" / "adapter_model.safetensors").read_bytes()
    delta = next(d for _, _, d in loaded.layers("default"))
    assert delta.up.pinned
    loaded.train()
    opt = torch.optim.SGD(loaded.trainable_parameters(), lr=1e-3)
    loaded(**batch).logits.sum().backward()
    opt.step()
    assert not delta.up.pinned  # the weights moved: quantisation-aware training takes over again
    loaded.eval()
    assert not torch.equal(_logits(loaded, batch), y)


# -- post-training quantisation -----------------------------------------------------------------------

def _trained_lora(**kw):
    torch.manual_seed(0)
    base = tiny_bert()
    am = petkit.adapt(base, petkit.LoraConfig(r=4, alpha=8, targets=["attn.q", "attn.v", "mlp.in"], **kw))
    with torch.no_grad():
        for _, _, d in am.layers("default"):
            if hasattr(d, "B"):
                d.B.normal_(std=0.1)
    return am


def test_ptq_error_falls_with_bits_and_matches_a_hand_quantised_delta():
    am = _trained_lora(alpha_pattern={"mlp.in": 2})
    batch = tiny_batch(am.base)
    reports = [quantize_adapter(am, "default", bits, batch=batch) for bits in (1, 2, 4, 8)]
    errors = [r.error for r in reports]
    outputs = [r.output_error for r in reports]
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == 4, errors
    assert outputs == sorted(outputs, reverse=True), outputs
    assert errors[0] > 0.3 and errors[-1] < 0.05
    assert am.active == ("default",) and am.adapters == ["default", "default-1bit", "default-2bit", "default-4bit",
                                                           "default-8bit"]
    # the 4-bit adapter's ΔW = s·Q(B')·Q(A) with B' carrying the module's own alpha (alpha_pattern folded in)
    for path, layer, d in am.layers("default-4bit"):
        if not hasattr(d, "up"):
            continue
        lora = layer.deltas["default"]
        expected = 2.0 * _reference_quantize(lora.B * (lora.scale / 2.0), 4, "lloyd-max") @ \
            _reference_quantize(lora.A.detach(), 4, "lloyd-max")
        torch.testing.assert_close(d.delta_weight(layer.base_layer), expected, atol=1e-6, rtol=1e-5)
        err = (expected - lora.delta_weight(layer.base_layer)).norm() / lora.delta_weight(layer.base_layer).norm()
        assert reports[2].errors[path] == pytest.approx(err.item(), rel=1e-4)
    # per layer, r = 4: q, v and mlp.in Down 4×32 and q, v Up 32×4 (128 weights each), mlp.in Up 64×4
    sizes = [128] * 5 + [256]
    for report, bits in zip(reports, (1, 2, 4, 8)):
        assert report.stored_bytes == 2 * sum(math.ceil(n * bits / 8) + 8 for n in sizes)
        assert report.float_bytes == 2 * 4 * sum(sizes)


def test_ptq_of_fp_adapters_and_the_bytes_it_reports(tmp_path):
    torch.manual_seed(0)
    base = tiny_bert()
    am = petkit.adapt(base, LowbitAdapterConfig(bits=32, r=4, train_head=False))
    with torch.no_grad():
        for _, _, d in am.layers("default"):
            d.up.weight.normal_(std=0.1)
    batch = tiny_batch(base)
    report = quantize_adapter(am, "default", 1, codebook="median", new_name="bin", batch=batch)
    assert am.adapter_config("bin").bits == 1 and am.adapter_config("bin").codebook == "median" and am.method_of("bin").name == "lowbit-adapter"
    assert 0 < report.output_error < 1 and 0 < report.error < 1
    am.save(tmp_path / "bin", names="bin")
    assert _tensor_bytes(tmp_path / "bin" / "adapter_model.safetensors")[0] == report.stored_bytes
    # 2 modules: Down 4×32 and Up 32×4 at 1 bit, 16 bytes each, + [μ, s]
    assert report.stored_bytes == 2 * 2 * (16 + 8) and report.float_bytes == 2 * 2 * 128 * 4
    am.set_active("bin")
    y = _logits(am, batch)
    loaded = petkit.load(tiny_bert(), tmp_path / "bin")
    torch.testing.assert_close(_logits(loaded, batch), y, atol=0, rtol=0)


def test_ptq_keeps_the_trained_head():
    am = _trained_lora()
    head = next(d for _, _, d in am.layers("default") if not hasattr(d, "B"))
    with torch.no_grad():
        head.module.weight.add_(1.0)
    quantize_adapter(am, "default", 8)
    new_head = next(d for _, _, d in am.layers("default-8bit") if not hasattr(d, "up"))
    assert torch.equal(new_head.module.weight, head.module.weight)


@pytest.mark.parametrize("config,match", [
    (petkit.LoraConfig(r=2, targets=["attn.q"], init="pissa"), "PiSSA"),
    (petkit.LoraConfig(r=2, targets=["attn.q", "attn.v"], rank_pattern={"attn.v": 3}), "one rank"),
    (petkit.DoraConfig(r=2, targets=["attn.q"]), "not dora"),
])
def test_ptq_refuses_what_it_cannot_convert(config, match):
    am = petkit.adapt(tiny_bert(), config)
    with pytest.raises(petkit.ConfigError, match=match):
        quantize_adapter(am, "default", 2)
    assert am.adapters == ["default"]


# -- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"bits": 3}, r"bits must be one of 1, 2, 4, 8, 32 \(32 = full precision\), got 3"),
    ({"bits": 16}, "bits must be one of"),
    ({"bits": 1.0}, "bits must be one of"),
    ({"bits": True}, "bits must be one of"),
    ({"codebook": "uniform"}, "codebook must be one of lloyd-max, median"),
    ({"r": 0}, "r must be a positive int"),
    ({"scale": 0}, "scale must be a positive number"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_bad_config_values(kwargs, match):
    for cls in (LowbitLoraConfig, LowbitAdapterConfig):
        with pytest.raises(petkit.ConfigError, match=match):
            cls(**kwargs)


def test_bad_targets_and_bits_for_the_low_level_functions():
    # the paper's q/v default is GPT-2's fused qkv layer (the engine's rule for default targets)
    adapted = petkit.adapt(tiny_gpt2(), LowbitLoraConfig()).state.modules["default"]
    assert adapted == [f"transformer.h.{i}.attn.c_attn" for i in (0, 1)]
    with pytest.raises(petkit.TargetError, match="block input"):  # the adapter reads a block input: attn.out/mlp.out
        petkit.adapt(tiny_bert(), LowbitAdapterConfig(targets=["attn.q"]))
    with pytest.raises(ValueError, match="bits must be one of 1, 2, 4, 8"):
        qz.gaussian_codebook(3)
