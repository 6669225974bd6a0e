"""T-MAC-style lookup-table matmul for 1–4 bit weights on CPU (Wei et al., EuroSys 2025).

    w = pack_lut(codes, scales, zeros, bits, group_size)   # once: bit planes, nibbles, 32-row tiles
    y = lut_matmul(x, w)                                    # x (..., K) → (..., M), y = x @ Wᵀ

`pack.py` holds the layout, `reference.py` the pure-PyTorch algorithm, `csrc/lut.cpp` the native
kernel and `native.py` its build; `matmul.py` picks the backend.
"""

from petkit.kernels.lut.matmul import lut_matmul
from petkit.kernels.lut.pack import LutWeight, pack_lut
from petkit.kernels.lut.reference import lut_reference

__all__ = ["LutWeight", "lut_matmul", "lut_reference", "pack_lut"]
