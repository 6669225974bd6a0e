"""The native dequantisation kernel (petkit/kernels/dequant.py, csrc/dequant.cpp) against the PyTorch
path of petkit.quant.formats: bit for bit, for every scheme and width it covers, float32 and bfloat16,
its AVX2 and portable scalar paths, odd shapes, row subsets, fp16 edge values; and the fallback when
the extension cannot be built. The build is cached across sessions (petkit/kernels/native.py); a fresh
cache costs one ~30 s compile in the first native test.

Each test's docstring names the bug it is there to catch.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch

from petkit.core.errors import KernelUnavailable
from petkit.kernels import dequant
from petkit.quant import PackedLinear, QuantFormat, formats
from petkit.quant.linear import PackedEmbedding
from native_cases import load_or_skip

ROOT = Path(__file__).resolve().parents[1]
FORMATS = [("int", 1), ("int", 2), ("int", 4), ("int", 8), ("nf4", 4)]
DTYPES = [torch.float32, torch.bfloat16]
ISAS = ["avx512", "avx2", "scalar"]  # each capped by the CPU: without AVX2, all three run the scalar path
# (rows, cols, group): a single row, a single group, odd row counts, the smallest group, SmolLM2's width
SHAPES = [(1, 8, 8), (3, 24, 8), (37, 200, 8), (5, 64, 64), (64, 576, 32), (11, 96, 16)]


@pytest.fixture(autouse=True)
def native_on():
    """Every test here starts with the kernel switched on (PETKIT_NATIVE_DEQUANT=0 turns it off elsewhere)."""
    old = dequant.set_native(True)
    yield
    dequant.set_native(old)


@pytest.fixture(scope="module")
def ext():
    return load_or_skip(dequant.load)


def bits_of(t):
    return t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32)


def assert_bitwise(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(bits_of(got), bits_of(want)), int((bits_of(got) != bits_of(want)).sum())


def packed_weight(scheme, bits, rows, cols, group, seed=0):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    codes, scales, zeros = formats.quantize_weight(w, scheme, bits, group)
    return formats.pack(codes, bits), scales, zeros


def torch_path(packed, scales, zeros, scheme, bits, cols, dtype):
    return formats.dequantize_codes(formats.unpack(packed, bits, cols), scales, zeros, scheme, dtype)


def native(packed, scales, zeros, scheme, bits, cols, dtype, isa="avx2", **kw):
    out = dequant.dequantize_packed(packed, scales, zeros, scheme, bits, cols, dtype, levels=formats.NF4, isa=isa, **kw)
    assert out is not None
    return out


@pytest.mark.parametrize("scheme,bits", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_native_equals_pytorch_bit_for_bit(ext, scheme, bits, dtype):
    """Bug: a native value that differs from PyTorch's in any bit (a fused multiply-add or another
    operation order, statistics not rounded to bfloat16 first, the wrong group's statistic, codes read
    from the wrong end of a byte, a tail of the row or a group boundary mishandled), on either path."""
    for i, (rows, cols, group) in enumerate(SHAPES):
        packed, scales, zeros = packed_weight(scheme, bits, rows, cols, group, seed=i)
        want = torch_path(packed, scales, zeros, scheme, bits, cols, dtype)
        for isa in ISAS:
            assert_bitwise(native(packed, scales, zeros, scheme, bits, cols, dtype, isa), want)


FP16_EDGES = [0.0, -0.0, 2 ** -24, -(2 ** -24), 2 ** -14, 6.1e-5, 65504.0, -65504.0, float("inf"), -float("inf"),
              float("nan"), 1.0, -1.5, 0.1, 3.14159, 1e-3]
FP32_EDGES = [0.0, -0.0, 1e-45, 1.17549435e-38, 3.4e38, -3.4e38, float("inf"), -float("inf"), float("nan"), 1.0,
              0.1, 1e-30, 7.0, 2 ** -126, 123.456, 1e20]


@pytest.mark.parametrize("scheme,bits", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_statistics_bit_for_bit(ext, scheme, bits, dtype):
    """Bug: subnormal, huge, infinite, NaN or negative-zero statistics that dequantise differently
    (e.g. 0 · inf and a NaN zero point giving another NaN, bfloat16 rounding of NaN or overflow)."""
    g = torch.Generator().manual_seed(bits)
    rows, cols, group = 64, 128, 8
    codes = torch.randint(0, 2 ** bits, (rows, cols), generator=g).to(torch.uint8)
    edges = torch.tensor(FP16_EDGES, dtype=torch.float16) if scheme == "int" else torch.tensor(FP32_EDGES)
    scales = edges[torch.randint(0, 16, (rows, cols // group), generator=g)]
    zeros = edges[torch.randint(0, 16, (rows, cols // group), generator=g)] if scheme == "int" else None
    want = formats.dequantize_codes(codes, scales, zeros, scheme, dtype)
    assert want.isnan().any() and want.isinf().any()
    for isa in ISAS:
        assert_bitwise(native(formats.pack(codes, bits), scales, zeros, scheme, bits, cols, dtype, isa), want)


@pytest.mark.parametrize("scheme,bits", FORMATS)
def test_row_subsets(ext, scheme, bits):
    """Bug: an index gathered wrongly (rows shifted, negative indices not counted from the end, the
    statistics of another row), a slice's offset lost, or an out-of-range index read out of bounds."""
    packed, scales, zeros = packed_weight(scheme, bits, 37, 96, 16)
    full = torch_path(packed, scales, zeros, scheme, bits, 96, torch.float32)
    for index in (torch.tensor([5, 0, 36, 5, -1, -37]), torch.tensor([], dtype=torch.long),
                  torch.tensor([3, 4], dtype=torch.int32)):
        for dtype in DTYPES:
            got = native(packed, scales, zeros, scheme, bits, 96, dtype, index=index)
            assert_bitwise(got, full.to(dtype)[index.long()] if dtype == torch.float32 else
                           torch_path(packed, scales, zeros, scheme, bits, 96, dtype)[index.long()])
    with pytest.raises(IndexError):
        native(packed, scales, zeros, scheme, bits, 96, torch.float32, index=torch.tensor([37]))
    with pytest.raises(IndexError):
        native(packed, scales, zeros, scheme, bits, 96, torch.float32, index=torch.tensor([-38]))
    fmt = QuantFormat(scheme, bits, 16)
    lay = PackedLinear(96, 37, fmt)
    lay.store(torch.randn(37, 96))
    ref = torch_path(lay.codes, lay.scales, lay.zeros, scheme, bits, 96, torch.float32)
    assert_bitwise(lay.dequantize(), ref)
    assert_bitwise(lay.dequantize(rows=slice(7, 20)), ref[7:20])
    assert_bitwise(lay.dequantize(rows=torch.tensor([[2, 9], [36, 2]])), ref[[2, 9, 36, 2]])


def test_out_buffer_and_threads(ext):
    """Bug: `out=` ignored (a new tensor returned, the buffer left stale) or rows split over threads
    with a wrong offset (large matrices are split, small ones run on the calling thread)."""
    packed, scales, zeros = packed_weight("int", 4, 700, 576, 32)  # 403K weights: split over the threads
    want = torch_path(packed, scales, zeros, "int", 4, 576, torch.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        buf = torch.full((700, 576), float("nan"))
        got = native(packed, scales, zeros, "int", 4, 576, torch.float32, out=buf)
        assert got.data_ptr() == buf.data_ptr()
        assert_bitwise(buf, want)
        assert_bitwise(native(packed, scales, zeros, "int", 4, 576, torch.bfloat16),
                       torch_path(packed, scales, zeros, "int", 4, 576, torch.bfloat16))
    finally:
        torch.set_num_threads(before)


def test_cases_the_kernel_leaves_to_pytorch(ext):
    """Bug: the kernel claiming a case it does not cover (3 bits, float64/float16 outputs), or a
    switched-off kernel still running."""
    packed, scales, zeros = packed_weight("int", 3, 4, 64, 16)
    assert dequant.dequantize_packed(packed, scales, zeros, "int", 3, 64) is None
    packed, scales, zeros = packed_weight("int", 4, 4, 64, 16)
    for dtype in (torch.float64, torch.float16):
        assert dequant.dequantize_packed(packed, scales, zeros, "int", 4, 64, dtype) is None
    dequant.set_native(False)
    assert dequant.dequantize_packed(packed, scales, zeros, "int", 4, 64) is None
    assert_bitwise(formats.dequantize_packed(packed, scales, zeros, "int", 4, 64),
                   torch_path(packed, scales, zeros, "int", 4, 64, torch.float32))


def _layers(seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = PackedLinear(96, 40, QuantFormat("nf4", 4, 32))
    lin.store(torch.randn(40, 96, generator=g))
    lin.bias.data = torch.randn(40, generator=g)
    emb = PackedEmbedding(50, 64, QuantFormat("int", 2, 16))
    emb.store(torch.randn(50, 64, generator=g))
    return lin, emb


def _run(lin, emb, monkeypatch, block_elements):
    from petkit.quant import linear

    monkeypatch.setattr(linear, "BLOCK_ELEMENTS", block_elements)  # 96 · 7 per block: six blocks of rows
    x = torch.randn(2, 3, 96, generator=torch.Generator().manual_seed(3), requires_grad=True)
    y = lin(x)
    y.backward(torch.ones_like(y))
    e = emb(torch.tensor([[1, 49, 1], [0, 7, 3]]))
    return y.detach(), x.grad, e


def test_layers_equal_with_the_kernel_and_without(ext, monkeypatch):
    """Bug: forward, the input gradient or an embedding lookup that changes when the kernel is used
    (a block of rows dequantised at the wrong offset, the embedding reading other rows)."""
    lin, emb = _layers()
    for block in (1 << 20, 96 * 7):
        with_kernel = _run(lin, emb, monkeypatch, block)
        dequant.set_native(False)
        without = _run(lin, emb, monkeypatch, block)
        dequant.set_native(True)
        for a, b in zip(with_kernel, without):
            assert_bitwise(a, b)


def test_fallback_when_the_build_fails_warns_once(monkeypatch):
    """Bug: a failed build that raises into the caller, warns on every call, or gives other values."""
    lin, emb = _layers()
    dequant.set_native(False)
    want = [lin.dequantize(), lin.dequantize(torch.bfloat16), emb(torch.tensor([4, 2])), lin.dequantize(rows=slice(3, 9))]

    def broken():
        raise KernelUnavailable("building the dequantisation kernel failed (test); PyTorch instead")

    dequant.set_native(True)
    monkeypatch.setattr(dequant, "load", broken)
    monkeypatch.setattr(dequant, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [lin.dequantize(), lin.dequantize(torch.bfloat16), emb(torch.tensor([4, 2])), lin.dequantize(rows=slice(3, 9))]
        lin(torch.randn(2, 96))
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == \
        ["building the dequantisation kernel failed (test); PyTorch instead"]
    for a, b in zip(got, want):
        assert_bitwise(a, b)


def test_extensions_share_one_builder():
    """Bug: the LUT kernel and the dequantisation kernel built by two copies of the build code, or
    into the same cache directory (one's build would overwrite the other's library)."""
    from petkit.kernels.lut import native as lut_native

    assert type(lut_native.EXTENSION) is type(dequant.EXTENSION)
    assert lut_native.cache_dir() != dequant.EXTENSION.cache_dir()
    assert lut_native.cache_dir().parent == dequant.EXTENSION.cache_dir().parent


@pytest.mark.slow  # times a few tiny cases: ~20 s; runs without bitsandbytes (its variants are then left out)
def test_benchmark_quick_run(tmp_path, ext):
    spec = importlib.util.spec_from_file_location("lowbit_layer", ROOT / "benchmarks" / "lowbit_layer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "lowbit_layer.json").read_text())
    assert result["cases"] and all(ms > 0 for c in result["cases"] for ms in c["ms"].values())
    assert (tmp_path / "lowbit_layer.md").is_file()
