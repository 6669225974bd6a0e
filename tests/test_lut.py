"""The T-MAC LUT matmul (petkit.kernels.lut): the PyTorch reference against dequantise-then-matmul,
the table properties (mirror symmetry, int8 NMSE, lookups linear in bits), the native C++ kernel
against the reference, and the errors. The native build is cached across sessions (see
petkit/kernels/lut/native.py); a fresh cache costs one ~30 s compile in the first native test."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import pytest
import torch

from petkit.core.errors import KernelUnavailable
from petkit.kernels.lut import LutWeight, lut_matmul, lut_reference, matmul, native, pack_lut
from petkit.kernels.lut.reference import build_tables, quantize_tables
from native_cases import load_or_skip

ROOT = Path(__file__).resolve().parents[1]
BITS = (1, 2, 3, 4)
# (M, K, group_size): M = 70 and 200 exercise the padded last tile; group_size 8 the shortest flush
SHAPES = [(32, 64, 64), (70, 128, 32), (64, 256, 128), (96, 48, 8), (200, 192, 64)]


def random_weight(M, K, bits, G, with_zeros, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2 ** bits, (M, K), generator=g)
    scales = torch.rand(M, K // G, generator=g) + 0.1
    zeros = torch.randn(M, K // G, generator=g) if with_zeros else None
    dense = scales.repeat_interleave(G, 1) * (codes.float() - 2 ** (bits - 1))
    if with_zeros:
        dense = dense + zeros.repeat_interleave(G, 1)
    return pack_lut(codes, scales, zeros, bits, G), dense


def rel_err(y, ref):
    return ((y - ref).abs().max() / ref.abs().max()).item()


def nmse(y, ref):
    return (((y - ref) ** 2).sum() / (ref ** 2).sum()).item()


@pytest.fixture(scope="module")
def ext():
    return load_or_skip(native.load)


# -- reference ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", BITS)
def test_reference_with_float_tables_equals_dequantise_then_matmul(bits):
    for (M, K, G), with_zeros, N in itertools.product(SHAPES, (False, True), (1, 4)):
        w, dense = random_weight(M, K, bits, G, with_zeros, seed=M + K + N)
        assert torch.equal(w.dequantize(), dense)  # the layout round-trips exactly
        x = torch.randn(N, K)
        y = lut_reference(x, w, quantize=False)
        assert y.shape == (N, M)
        assert rel_err(y, x @ dense.T) < 1e-5  # float32 sums in another order: ~1e-7 seen
    x3 = torch.randn(2, 3, K)  # leading dimensions are kept
    assert lut_reference(x3, w, quantize=False).shape == (2, 3, M)


def test_tables_are_mirror_symmetric_and_hold_every_sign_pattern():
    x = torch.randn(3, 40)
    t = build_tables(x)
    assert torch.equal(t, -t.flip(-1))  # T[c] = −T[15 − c]
    signs = torch.tensor([[1.0 if (c >> r) & 1 else -1.0 for r in range(4)] for c in range(16)])
    assert torch.allclose(t, x.view(3, 10, 1, 4).mul(signs).sum(-1), atol=1e-6)
    q, _ = quantize_tables(t, x, 16)
    assert torch.equal(q, -q.flip(-1))  # round half to even keeps the symmetry after quantisation


def test_int8_tables_keep_nmse_below_t_mac_bound():
    torch.manual_seed(0)
    for bits in BITS:
        w, _ = random_weight(256, 512, bits, 128, with_zeros=False, seed=bits)
        x = torch.randn(4, 512)
        assert nmse(lut_reference(x, w), lut_reference(x, w, quantize=False)) < 5e-4


def test_lookups_are_linear_in_bits():
    M, K, N = 64, 128, 3
    for bits in BITS:
        w, _ = random_weight(M, K, bits, 64, with_zeros=True)
        _, lookups = lut_reference(torch.randn(N, K), w, return_lookups=True)
        assert lookups == bits * M * (K // 4) * N  # one per plane, row and 4-activation group


def test_nbytes_counts_the_packed_weight():
    w, _ = random_weight(64, 128, 3, 32, with_zeros=True)
    assert isinstance(w, LutWeight) and w.packed.numel() == 64 * 128 * 3 // 8
    assert w.nbytes() == w.packed.numel() + 2 * 4 * w.scales.numel()


# -- native kernel --------------------------------------------------------------------------------

def test_native_tables_equal_the_reference_tables(ext):
    torch.manual_seed(1)
    x = torch.randn(64, 1024) * torch.rand(64, 1024) * 5  # enough entries to hit rounding near .5
    x[1, :64] = 0  # an all-zero activation group: scale 0, table 0
    q, scale = quantize_tables(build_tables(x), x, 64)
    for isa in (0, 1):  # scalar, AVX2 (capped to what the CPU has)
        nq, nscale = ext.quantized_tables(x, 64, isa)
        assert torch.equal(q.to(torch.int8), nq) and torch.equal(scale, nscale)


@pytest.mark.parametrize("bits", BITS)
def test_native_matches_reference(ext, bits):
    # Both quantise the tables with the same float ops, so the integer sums agree exactly; only the
    # fp32 accumulation over groups differs in order (and FMA vs mul+add): ~1e-7 relative seen.
    for (M, K, G), with_zeros, N, isa in itertools.product(SHAPES, (False, True), (1, 5), ("avx512", "avx2", "scalar")):
        w, _ = random_weight(M, K, bits, G, with_zeros, seed=bits * 1000 + M + N)
        x = torch.randn(N, K)
        for act_group in (64, 8):
            y = lut_matmul(x, w, backend="native", act_group_size=act_group, isa=isa)
            assert rel_err(y, lut_reference(x, w, act_group)) < 1e-5, (M, K, G, with_zeros, N, isa, act_group)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_native_worst_case_sums_do_not_overflow_int16(ext, isa):
    # Every lookup at the largest entry (+127) and every plane bit set: the int16 accumulators reach
    # their bound, 127 · 15 per table group, 16 table groups (64 activations) between flushes.
    K = 512
    w = pack_lut(torch.full((64, K), 15), torch.ones(64, K // 128), None, 4, 128)
    x = torch.ones(2, K)
    y = lut_matmul(x, w, backend="native", act_group_size=128, isa=isa)
    assert torch.allclose(y, torch.full((2, 64), 7.0 * K), rtol=1e-6)


def test_native_int8_nmse_and_leading_dims(ext):
    w, dense = random_weight(256, 512, 2, 128, with_zeros=True, seed=7)
    x = torch.randn(2, 3, 512)
    y = lut_matmul(x, w, backend="native")
    assert y.shape == (2, 3, 256)
    assert nmse(y, x @ dense.T) < 5e-4


def test_native_threads_agree_with_one_thread(ext):
    w, _ = random_weight(1024, 256, 3, 64, with_zeros=True)
    x = torch.randn(3, 256)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lut_matmul(x, w, backend="native")
        torch.set_num_threads(2)
        two = lut_matmul(x, w, backend="native")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)  # tiles are independent: the same float ops either way


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(bits=5), "bits must be 1, 2, 3 or 4, got 5"),
    (dict(bits=0), "bits must be 1, 2, 3 or 4, got 0"),
    (dict(K=100, G=64), "K=100 is not divisible by group_size=64"),
    (dict(K=96, G=12), "group_size must be a positive multiple of 8"),
    (dict(codes_high=True), "codes must lie in [0, 4) for bits=2"),
    (dict(float_codes=True), "codes must be an integer tensor"),
    (dict(bad_scales=True), "scales must have shape (M, K // group_size) = (32, 1)"),
])
def test_pack_rejects_bad_input(kwargs, message):
    bits, K, G = kwargs.get("bits", 2), kwargs.get("K", 64), kwargs.get("G", 64)
    codes = torch.zeros(32, K, dtype=torch.int64)
    if kwargs.get("codes_high"):
        codes[0, 0] = 4
    if kwargs.get("float_codes"):
        codes = codes.float()
    scales = torch.ones(32, max(1, K // G) + (1 if kwargs.get("bad_scales") else 0))
    with pytest.raises(ValueError) as info:
        pack_lut(codes, scales, None, bits, G)
    assert message in str(info.value)


def test_matmul_rejects_bad_input():
    w, _ = random_weight(32, 64, 2, 64, with_zeros=False)
    with pytest.raises(ValueError, match="x has 32 features but the weight expects K=64"):
        lut_matmul(torch.randn(1, 32), w)
    with pytest.raises(ValueError, match="backend must be one of"):
        lut_matmul(torch.randn(1, 64), w, backend="cuda")
    with pytest.raises(ValueError, match="act_group_size must be a positive multiple of 8"):
        lut_matmul(torch.randn(1, 64), w, act_group_size=12)


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(native.EXTENSION, "_loaded", {})
    monkeypatch.setenv("CXX", "no-such-compiler-petkit")
    with pytest.raises(KernelUnavailable, match="no C\\+\\+ compiler .* backend=\"reference\""):
        native.load()


def test_unavailable_native_raises_and_auto_falls_back_with_one_warning(monkeypatch):
    def broken_build():
        raise KernelUnavailable('building the LUT kernel failed (simulated); backend="reference" works')

    monkeypatch.setattr(native.EXTENSION, "_loaded", {})
    monkeypatch.setattr(native.EXTENSION, "_build", broken_build)
    monkeypatch.setattr(matmul, "_warned", False)
    w, _ = random_weight(32, 64, 2, 64, with_zeros=True)
    x = torch.randn(2, 64)
    with pytest.raises(KernelUnavailable, match="simulated"):
        lut_matmul(x, w, backend="native")
    with pytest.warns(RuntimeWarning, match="using the PyTorch reference"):
        y = lut_matmul(x, w)
    assert torch.equal(y, lut_reference(x, w))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lut_matmul(x, w)  # warned once per process, not per call


# -- benchmark smoke run --------------------------------------------------------------------------

@pytest.mark.slow  # builds (or loads) the kernel and times a few tiny cases: ~10 s
def test_benchmark_quick_run(tmp_path, ext):
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("lut_gemm", ROOT / "benchmarks" / "lut_gemm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "lut_gemm.json").read_text())
    assert result["rows"] and all(r["ms"] > 0 for r in result["rows"])
    assert (tmp_path / "lut_gemm.md").is_file() and (tmp_path / "lut_gemm.png").stat().st_size > 1000
