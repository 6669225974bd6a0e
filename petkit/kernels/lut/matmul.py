"""`lut_matmul`: y = x @ Wᵀ for a `LutWeight`, on the native kernel or the PyTorch reference."""

from __future__ import annotations

import warnings

import torch

from petkit.core.errors import KernelUnavailable
from petkit.kernels.lut import native
from petkit.kernels.lut.pack import LutWeight
from petkit.kernels.lut.reference import lut_reference

BACKENDS = ("auto", "native", "reference")
# AVX-512BW is opt-in: on this repo's AMD EPYC test machine (512-bit ops double-pumped) it measured
# no faster than AVX2 (benchmarks/results/lut_gemm.md).
ISA = {"scalar": 0, "avx2": 1, "avx512": 2}
_warned = False


def lut_matmul(x: torch.Tensor, w: LutWeight, backend: str = "auto", act_group_size: int = 64,
               isa: str = "avx2") -> torch.Tensor:
    """x (..., K) float → y (..., M) float32, no bias. Tables are int8 with one scale per
    `act_group_size` activations (a multiple of 8). `isa` caps the native instruction set: "avx2"
    (default), "avx512" or "scalar" (the portable C++ path); the CPU's own limit always applies.
    Inference only: the native result carries no gradient."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if x.shape[-1] != w.in_features:
        raise ValueError(f"x has {x.shape[-1]} features but the weight expects K={w.in_features}")
    if isa not in ISA:
        raise ValueError(f"isa must be one of {', '.join(ISA)}, got {isa!r}")
    if act_group_size <= 0 or act_group_size % 8:
        raise ValueError(f"act_group_size must be a positive multiple of 8, got {act_group_size!r}")
    if backend != "reference":
        ext = _load(backend)  # after the first call, a dictionary look-up
        if ext is not None:  # leading dimensions of x are kept by the kernel
            return ext.lut_gemm(x if x.dtype == torch.float32 else x.float(), w.packed, w.scales, w.zeros,
                                w.bits, w.out_features, w.group_size, act_group_size, ISA[isa])
    return lut_reference(x, w, act_group_size)


def _load(backend: str):
    """The extension, or None (after one warning per process) when "auto" has to fall back."""
    global _warned
    try:
        return native.load()
    except KernelUnavailable as e:
        if backend == "native":
            raise
        if not _warned:
            warnings.warn(f"{e} — using the PyTorch reference instead (slow)", RuntimeWarning, stacklevel=3)
            _warned = True
        return None
