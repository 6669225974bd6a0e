"""Offline re-layout of low-bit weight codes for the LUT kernel: `pack_lut` → `LutWeight`.

The weight is W[m, k] = scales[m, k // G] · (codes[m, k] − 2^(b−1)) + zeros[m, k // G].
Each code is split into b one-bit planes; the plane bits of 4 consecutive K positions form one 4-bit
table index (bit r ↔ activation r of the group). The indices are then laid out the way the kernel
streams them, per tile of 32 output rows and per "step" of 8 activations (two 4-activation groups,
one per 128-bit lane of an AVX2 register):

  packed[tile, step, :]  32·b bytes; planes in units of two (0,1), (2,3), then a lone last plane
    pair unit, 2 × 32 bytes (v = 0, 1):  byte (lane L, q, s) = 16 L + 2 q + s holds plane i+s of
        K-group 2·step + L; low nibble row 16 v + q, high nibble row 16 v + 8 + q
    lone plane, 32 bytes:  byte (L, q, p) = 16 L + 2 q + p; low nibble row 8 p + q, high nibble
        row 16 + 8 p + q
  scales[tile, k // G, 32], zeros likewise (or None)

Adjacent bytes of a pair unit are the same row in two planes, so one `maddubs` with multipliers
(2^i, 2^(i+1)) widens the int8 lookups to int16 and weights the planes in one instruction. Rows
are padded to a multiple of 32 (padded rows have scale 0 and are never written out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TILE = 32  # output rows per kernel tile (one _mm256_shuffle_epi8 returns 32 lookups)
STEP = 8  # activations per kernel step: two 4-activation table groups
BITS = (1, 2, 3, 4)


@dataclass
class LutWeight:
    """A low-bit weight in the LUT kernel's layout. All fields are plain CPU tensors or ints."""

    packed: torch.Tensor  # uint8 (M_pad // 32, K // 8, 32 · bits)
    scales: torch.Tensor  # float32 (M_pad // 32, K // G, 32)
    zeros: torch.Tensor | None  # float32 like scales, or None
    bits: int
    group_size: int
    out_features: int  # M (unpadded)
    in_features: int  # K

    def nbytes(self) -> int:
        tensors = [self.packed, self.scales] + ([self.zeros] if self.zeros is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def dequantize(self) -> torch.Tensor:
        """The float32 (M, K) weight this represents (decoded from the packed layout)."""
        idx = unpack_indices(self)  # (b, M_pad, K // 4)
        shifts = torch.arange(4)
        bits = (idx.unsqueeze(-1) >> shifts) & 1  # (b, M_pad, K // 4, 4): bit r = activation r
        plane_weights = (2 ** torch.arange(self.bits)).view(-1, 1, 1, 1)
        codes = (bits * plane_weights).sum(0).reshape(idx.shape[1], -1)
        scales, zeros = row_major(self.scales), row_major(self.zeros)
        per_k = lambda t: t.repeat_interleave(self.group_size, dim=1)  # noqa: E731
        w = per_k(scales) * (codes.float() - 2 ** (self.bits - 1))
        if zeros is not None:
            w = w + per_k(zeros)
        return w[: self.out_features]


def row_major(tiled: torch.Tensor | None) -> torch.Tensor | None:
    """(tiles, groups, 32) → (M_pad, groups): undo the per-tile layout of scales or zeros."""
    if tiled is None:
        return None
    return tiled.permute(0, 2, 1).reshape(-1, tiled.shape[1])


def _check(codes, scales, zeros, bits, group_size) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be 1, 2, 3 or 4, got {bits!r}")
    if codes.dim() != 2 or codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError(f"codes must be an integer tensor of shape (M, K), got {codes.dtype} {tuple(codes.shape)}")
    M, K = codes.shape
    if not isinstance(group_size, int) or group_size <= 0 or group_size % STEP:
        raise ValueError(f"group_size must be a positive multiple of {STEP} (two 4-activation table "
                         f"groups per kernel step), got {group_size!r}")
    if K % group_size:
        raise ValueError(f"K={K} is not divisible by group_size={group_size}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2 ** bits):
        raise ValueError(f"codes must lie in [0, {2 ** bits}) for bits={bits}, "
                         f"got values in [{int(codes.min())}, {int(codes.max())}]")
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t is not None and tuple(t.shape) != (M, K // group_size):
            raise ValueError(f"{name} must have shape (M, K // group_size) = {(M, K // group_size)}, "
                             f"got {tuple(t.shape)}")


def pack_lut(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int,
             group_size: int) -> LutWeight:
    """Re-lay b-bit codes (M, K) with per-group scales (and zeros) for `lut_matmul`; done once."""
    _check(codes, scales, zeros, bits, group_size)
    M, K = codes.shape
    M_pad = -(-M // TILE) * TILE
    pad = M_pad - M
    codes = torch.nn.functional.pad(codes.to(torch.int32), (0, 0, 0, pad))
    tiled = lambda t: torch.nn.functional.pad(t.float(), (0, 0, 0, pad)).view(-1, TILE, t.shape[1])  # noqa: E731
    planes = [(codes >> i) & 1 for i in range(bits)]  # each (M_pad, K)
    # bit r of a 4-bit index = plane bit of activation r of the group
    idx = torch.stack([(p.view(M_pad, K // 4, 4) << torch.arange(4)).sum(-1) for p in planes])
    return LutWeight(
        packed=_layout(idx.to(torch.uint8), bits).contiguous(),
        scales=tiled(scales).permute(0, 2, 1).contiguous(),
        zeros=None if zeros is None else tiled(zeros).permute(0, 2, 1).contiguous(),
        bits=bits, group_size=group_size, out_features=M, in_features=K,
    )


def _units(bits: int) -> list[tuple[int, ...]]:
    """Planes grouped as the kernel consumes them: pairs, then a lone last plane if b is odd."""
    return [tuple(range(i, min(i + 2, bits))) for i in range(0, bits, 2)]


# Per unit, how a (planes, tiles, 32 rows, steps, 2 lanes) index block splits and is permuted into
# bytes ordered (tile, step, byte, nibble); the two forms are exact inverses.
def _split(unit_len: int, T: int, S: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if unit_len == 2:  # dims: s, T, v, h, q, S, L  → T, S, v, L, q, s, h
        return (2, T, 2, 2, 8, S, 2), (1, 5, 2, 6, 4, 0, 3)
    return (1, T, 2, 2, 8, S, 2), (1, 5, 0, 6, 4, 3, 2)  # dims: _, T, h, p, q, S, L → T, S, _, L, q, p, h


def _layout(idx: torch.Tensor, bits: int) -> torch.Tensor:
    _, M_pad, J = idx.shape
    T, S = M_pad // TILE, J // 2
    parts = []
    for unit in _units(bits):
        shape, order = _split(len(unit), T, S)
        nib = idx[list(unit)].reshape(shape).permute(order).reshape(T, S, -1, 2)
        parts.append(nib[..., 0] | (nib[..., 1] << 4))
    return torch.cat(parts, dim=-1)


def unpack_indices(w: LutWeight) -> torch.Tensor:
    """The inverse of the layout: (b, M_pad, K // 4) int64 table indices."""
    T, S, _ = w.packed.shape
    packed = w.packed.to(torch.int64)
    nib = torch.stack([packed & 15, packed >> 4], dim=-1)  # (T, S, 32·b, 2)
    planes, start = [], 0
    for unit in _units(w.bits):
        shape, order = _split(len(unit), T, S)
        n = 32 * len(unit)
        chunk = nib[:, :, start:start + n]
        start += n
        permuted_shape = [shape[d] for d in order]
        inverse = [order.index(d) for d in range(len(order))]
        planes.append(chunk.reshape(permuted_shape).permute(inverse).reshape(len(unit), T * TILE, 2 * S))
    return torch.cat(planes)
