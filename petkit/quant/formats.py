"""Low-bit weight formats: round a (out, in) weight to codes with per-group scales, pack, unpack, dequantise.

Groups run along a row: group g of row m is W[m, g·G : (g+1)·G]. Two schemes:

  "int"  b ∈ {1, 2, 3, 4, 8}: W ≈ scale · q + zero, q ∈ [0, 2^b), a scale and a zero point per group
         (GGUF's Q4_1 is this with b = 4, G = 32). Round-to-nearest from the group's min and max is a
         poor fit below 4 bits (notes/low-bit.md §5: int2 error 0.41, int1 0.96), so the scale and zero
         are then refitted by least squares for the codes, and the codes re-rounded, a few times,
         keeping each group's best fit (HQQ-style alternating minimisation, no calibration data).
  "nf4"  b = 4: W ≈ NF4[q] · absmax, the QLoRA data type (the 16 normal-quantile levels of
         bitsandbytes, an absmax per group): bit-compatible with bitsandbytes' NF4 for the same
         block size (its blocks of consecutive elements are our row groups when G divides in).

Packing: each row's codes are one little-endian bit stream, padded to whole bytes; for b = 1, 2, 4
that is 8 / b codes per byte, the first code in the lowest bits (bitsandbytes and GGUF order nibbles
differently; this order is ours, and the readers of their files convert).
"""

from __future__ import annotations

import torch

SCHEMES = {"int": (1, 2, 3, 4, 8), "nf4": (4,)}
REFITS = 6  # least-squares refits of the int scheme; the error stops falling after 3–5 on Gaussian weights

# bitsandbytes' NF4 levels (functional.get_4bit_type("nf4")): 7 negative, 0, 8 positive, scaled to ±1.
NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])
# The dtypes the per-group statistics are kept in: GGUF's fp16 for int; bitsandbytes' fp32 absmax for nf4.
STAT_DTYPES = {"int": torch.float16, "nf4": torch.float32}


def check_format(scheme: str, bits: int, group_size: int) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SCHEMES[scheme]:  # 4.0 == 4, True == 1
        raise ValueError(f"the {scheme} scheme takes bits {', '.join(map(str, SCHEMES[scheme]))}, got {bits!r}")
    if not (isinstance(group_size, int) and not isinstance(group_size, bool) and group_size >= 8 and group_size % 8 == 0):
        raise ValueError(f"group_size must be a positive multiple of 8, got {group_size!r}")


@torch.no_grad()
def quantize_weight(w: torch.Tensor, scheme: str, bits: int, group_size: int):
    """(codes uint8 (out, in), scales (out, in/G), zeros (out, in/G) or None) for a float weight."""
    check_format(scheme, bits, group_size)
    out_f, in_f = w.shape
    if in_f % group_size:
        raise ValueError(f"in_features={in_f} is not divisible by group_size={group_size}")
    g = w.detach().float().reshape(out_f, in_f // group_size, group_size)
    if scheme == "nf4":
        absmax = g.abs().amax(-1)
        scaled = g / absmax.clamp_min(torch.finfo(torch.float32).tiny)[..., None]
        codes = torch.bucketize(scaled, (NF4[1:] + NF4[:-1]) / 2)
        return codes.to(torch.uint8).reshape(out_f, in_f), absmax.to(STAT_DTYPES[scheme]), None
    codes, scale, zero = _fit_int(g, bits)
    return codes.reshape(out_f, in_f), scale, zero


def _fit_int(g: torch.Tensor, bits: int):
    """Codes, fp16 scales and zeros for groups g (…, G), minimising the squared error per group."""
    top = 2 ** bits - 1
    lo, hi = g.amin(-1), g.amax(-1)
    scale, zero = ((hi - lo) / top), lo
    best = None
    for _ in range(REFITS + 1):
        scale, zero = _representable(scale, zero)
        q = _round(g, scale, zero, top)
        err = (q * scale[..., None] + zero[..., None] - g).square().sum(-1)
        if best is None:
            best = (q, scale, zero, err)
        else:
            better = err < best[3]
            best = (torch.where(better[..., None], q, best[0]), torch.where(better, scale, best[1]),
                     torch.where(better, zero, best[2]), torch.minimum(err, best[3]))
        # Least squares for (scale, zero) given the codes: a line through the points (q, w) of each group.
        qm, wm = q.mean(-1), g.mean(-1)
        dq = q - qm[..., None]
        var = dq.square().sum(-1)
        fitted = (dq * (g - wm[..., None])).sum(-1) / var.clamp_min(1e-12)
        scale = torch.where(var > 0, fitted, scale)
        zero = wm - scale * qm
    q, scale, zero, _ = best
    return q.to(torch.uint8), scale.half(), zero.half()


def _representable(scale, zero):
    """The fp16 values the statistics are stored as, so the error is measured on what is kept. A zero
    scale (a constant group, e.g. a padding row) would make the codes undefined: any positive one gives
    q = 0 exactly; the smallest normal fp16 keeps the group's terms tiny for kernels that write
    w = s·(q − c) + z (T-MAC), where a large s would leave a large cancelling pair."""
    scale = scale.half().float()
    return torch.where(scale > 0, scale, torch.full_like(scale, 2.0 ** -14)), zero.half().float()


def _round(g, scale, zero, top):
    return ((g - zero[..., None]) / scale[..., None]).round_().clamp_(0, top)


def dequantize_packed(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, scheme: str, bits: int,
                      cols: int, dtype: torch.dtype = torch.float32, index: torch.Tensor | None = None,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """The float (rows, cols) matrix of packed rows (`pack`'s layout) and their statistics, or only the
    rows of a flat integer `index`: the native kernel (petkit.kernels.dequant) where it covers the
    case and builds, else `unpack` and `dequantize_codes` in PyTorch; the two agree bit for bit. The
    kernel writes into `out` (contiguous, of `dtype` and the result's shape) when given; the PyTorch
    path ignores it and returns a new tensor, so use the returned one."""
    from petkit.kernels import dequant

    w = dequant.dequantize_packed(packed, scales, zeros, scheme, bits, cols, dtype, index=index, out=out, levels=NF4)
    if w is not None:
        return w
    if index is not None:
        packed, scales, zeros = packed[index], scales[index], None if zeros is None else zeros[index]
    return dequantize_codes(unpack(packed, bits, cols), scales, zeros, scheme, dtype)


def dequantize_codes(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, scheme: str,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float (out, in) weight for unpacked codes (out, in) and per-group statistics (out, in/G)."""
    out_f, in_f = codes.shape
    groups = scales.shape[1]
    if scheme == "nf4":
        levels = NF4.to(dtype).index_select(0, codes.reshape(-1).int()).view(out_f, groups, -1)
        return (levels * scales.to(dtype)[..., None]).view(out_f, in_f)
    q = codes.view(out_f, groups, -1).to(dtype)
    return torch.addcmul(zeros.to(dtype)[..., None], q, scales.to(dtype)[..., None]).view(out_f, in_f)


# -- packing ---------------------------------------------------------------------------------------

def packed_row_bytes(in_features: int, bits: int) -> int:
    return -(-in_features * bits // 8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (out, in) -> (out, packed_row_bytes) uint8, one little-endian bit stream per row."""
    out_f, in_f = codes.shape
    if bits == 8:
        return codes.to(torch.uint8).contiguous()
    bits_of = (codes.to(torch.uint8)[..., None] >> torch.arange(bits, dtype=torch.uint8)) & 1  # (out, in, b)
    stream = bits_of.reshape(out_f, in_f * bits)
    stream = torch.nn.functional.pad(stream, (0, -stream.shape[1] % 8))
    weights = (1 << torch.arange(8, dtype=torch.int32)).to(torch.uint8)
    return (stream.view(out_f, -1, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """The inverse of `pack`: uint8 codes (out, in)."""
    out_f = packed.shape[0]
    if bits == 8:
        return packed
    if 8 % bits == 0:  # whole codes per byte: one shift per position in the byte
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
        codes = (packed[..., None] >> shifts) & (2 ** bits - 1)
        return codes.view(out_f, -1)[:, :in_features]
    stream = ((packed[..., None] >> torch.arange(8, dtype=torch.uint8)) & 1).view(out_f, -1)
    planes = stream[:, : in_features * bits].view(out_f, in_features, bits)
    return (planes << torch.arange(bits, dtype=torch.uint8)).sum(-1, dtype=torch.uint8)
