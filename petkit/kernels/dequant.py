"""Native dequantisation of packed low-bit rows (csrc/dequant.cpp) to float32 or bfloat16.

    w = dequantize_packed(codes, scales, zeros, "int", 4, cols)        # (rows, cols), or None
    w = dequantize_packed(codes, scales, None, "nf4", 4, cols, index=ids)

The layout is `petkit.quant.formats`' (one little-endian bit stream per row, groups along the row);
the results are bit-identical to `formats.dequantize_codes(formats.unpack(...))` (the same float
operations; tests/test_quant_native.py checks every scheme and width). Covers the int scheme at 1, 2,
4 and 8 bits and nf4, float32 and bfloat16 outputs, CPU tensors; for anything else, or when the
extension cannot be built (one RuntimeWarning per process), `dequantize_packed` returns None and the
caller runs the PyTorch path. AVX2 where the CPU has it, a portable scalar path otherwise; rows are
split over threads (at::parallel_for) only when there are more than 64K weights.

`set_native(False)` (or `PETKIT_NATIVE_DEQUANT=0` in the environment) turns the kernel off, e.g. to
time the PyTorch path.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from petkit.core.errors import KernelUnavailable
from petkit.kernels.native import NativeExtension

SOURCE = Path(__file__).with_name("csrc") / "dequant.cpp"
EXTENSION = NativeExtension(
    "petkit_dequant", [SOURCE], "the dequantisation kernel",
    "the packed weights are dequantised in PyTorch instead (same values, slower)",
    # exactly the adds and multiplies written (no fused multiply-add), as formats.dequantize_codes
    extra_cflags=("-ffp-contract=off",))
ISA = {"scalar": 0, "avx2": 1, "avx512": 2}
BITS = {"int": (1, 2, 4, 8), "nf4": (4,)}
DTYPES = (torch.float32, torch.bfloat16)

_enabled = os.environ.get("PETKIT_NATIVE_DEQUANT", "1") != "0"
_warned = False


def load():
    """The compiled extension module; raises KernelUnavailable. Tried once per process."""
    return EXTENSION.load()


def available() -> bool:
    return EXTENSION.available()


def set_native(enabled: bool) -> bool:
    """Use the native kernel when it builds (True, the default) or always PyTorch; returns the old setting."""
    global _enabled
    old, _enabled = _enabled, bool(enabled)
    return old


def _extension():
    """The extension, or None (after one warning per process) when it cannot be built."""
    global _warned
    try:
        return load()
    except KernelUnavailable as e:
        if not _warned:
            warnings.warn(str(e), RuntimeWarning, stacklevel=4)
            _warned = True
        return None


def supports(scheme: str, bits: int, dtype: torch.dtype) -> bool:
    return _enabled and dtype in DTYPES and bits in BITS.get(scheme, ())


def dequantize_packed(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, scheme: str,
                      bits: int, cols: int, dtype: torch.dtype = torch.float32, index: torch.Tensor | None = None,
                      out: torch.Tensor | None = None, levels: torch.Tensor | None = None,
                      isa: str = "avx512") -> torch.Tensor | None:
    """The (rows, cols) matrix of packed rows (rows of `index` only, when given: a flat integer tensor,
    negative entries counting from the end), written into `out` when given; None when the kernel
    does not cover the case or cannot be built. `levels`: the 16 NF4 values (nf4 scheme)."""
    if not supports(scheme, bits, dtype) or packed.device.type != "cpu" or (index is not None and index.is_floating_point()):
        return None
    ext = _extension()
    if ext is None:
        return None
    if scheme == "nf4":
        zeros = None
        if levels is None:
            raise ValueError("the nf4 scheme needs its 16 levels")
    else:
        levels = None
    return ext.dequantize(packed, scales, zeros, levels, index, bits, cols, dtype == torch.bfloat16, out, ISA[isa])
