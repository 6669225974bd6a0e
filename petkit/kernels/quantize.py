"""Gaussian codebooks, straight-through fake quantisation and bit packing for low-bit adapters.

A weight tensor W is standardised with its own statistics (μ = mean, s = std, computed with gradient),
each standardised value is snapped to the nearest level of a codebook for N(0, 1), and the result is
de-standardised:  W_eff = Q((W − μ) / (s + 1e-5)) · s + μ.  The backward pass treats Q as the identity
(straight-through estimator), while μ and s keep their true gradients.

Two codebooks with 2^bits levels, thresholds at the midpoints between levels:
  "lloyd-max"  each level is the conditional mean of its cell (the MSE-optimal quantiser of a Gaussian;
               1 bit: ±sqrt(2/π) = ±0.7979). The paper's "minimises the quantisation error".
  "median"     each level is the probability median of its cell (what the official code computes;
               1 bit: ±0.6745, 2 bits: ±0.3778, ±1.2657).
On disk a quantised tensor is its codes packed `8 // bits` to a byte (first code in the lowest bits,
as in the official code) plus [μ, s] in float32: ceil(n · bits / 8) + 8 bytes.
"""

from __future__ import annotations

import functools
import math

import torch

BITS = (1, 2, 4, 8)
CODEBOOKS = ("lloyd-max", "median")
EPS = 1e-5  # added to the std, as in the official code


@functools.cache
def gaussian_codebook(bits: int, kind: str = "lloyd-max") -> tuple[torch.Tensor, torch.Tensor]:
    """(levels, thresholds) for N(0, 1) in float64: 2^bits ascending levels, 2^bits − 1 midpoints."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {', '.join(map(str, BITS))}, got {bits!r}")
    if kind not in CODEBOOKS:
        raise ValueError(f"codebook must be one of {', '.join(CODEBOOKS)}, got {kind!r}")
    half = 2 ** bits // 2
    # The codebook is symmetric and the middle threshold is 0, so solve for the negative half only:
    # its cells lie in (−inf, 0], where Φ has full relative precision. Newton on the fixed point
    # m = update(m) converges in a few steps where the plain (Lloyd) iteration needs ~10^5 for 8 bits.
    m = torch.special.ndtri((torch.arange(half, dtype=torch.float64) + 0.5) / (2 * half))
    with torch.inference_mode(False), torch.enable_grad():  # the Jacobian needs autograd
        for _ in range(50):
            residual = _update(m, kind) - m
            jac = torch.autograd.functional.jacobian(lambda v: _update(v, kind), m, vectorize=True)
            step = torch.linalg.solve(jac - torch.eye(half, dtype=torch.float64), residual)
            m = m - step
            if step.abs().max() < 1e-12:
                break
    levels = torch.cat([m, -m.flip(0)])
    return levels, (levels[1:] + levels[:-1]) / 2


def _update(m: torch.Tensor, kind: str) -> torch.Tensor:
    """One fixed-point step for the negative levels m: re-centre each level in its cell."""
    edges = torch.cat([m.new_full((1,), -math.inf), (m[1:] + m[:-1]) / 2, m.new_zeros(1)])
    cdf = torch.special.ndtr(edges)
    if kind == "median":
        return torch.special.ndtri((cdf[:-1] + cdf[1:]) / 2)
    pdf = torch.exp(-0.5 * edges * edges) / math.sqrt(2 * math.pi)
    return (pdf[:-1] - pdf[1:]) / (cdf[1:] - cdf[:-1])  # E[Z | a < Z < b]


def standardise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, μ, s) with z = (w − μ) / (s + EPS); μ and s are kept in the graph."""
    mu, s = w.mean(), w.std()
    return (w - mu) / (s + EPS), mu, s


def fake_quantize(w: torch.Tensor, levels: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """W_eff = Q(z) · s + μ with a straight-through gradient for Q (levels/thresholds in w's dtype)."""
    z, mu, s = standardise(w)
    q = levels[torch.bucketize(z.detach(), thresholds)]
    # q + (z − z) is exactly q in floating point ((q + z) − z is not), so the forward value equals
    # the dequantised codes bit for bit and a saved-then-loaded adapter reproduces it exactly.
    return (q + (z - z.detach())) * s + mu


@torch.no_grad()
def quantize(w: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes as int64 in [0, 2^bits), stats = [μ, s] in float32)."""
    z, mu, s = standardise(w)
    return torch.bucketize(z, thresholds), torch.stack([mu, s]).float()


def dequantize(codes: torch.Tensor, stats: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    mu, s = stats.to(levels.dtype)
    return levels[codes] * s + mu


def packed_size(numel: int, bits: int) -> int:
    """Bytes of `numel` codes packed at `bits` per code."""
    return -(-numel * bits // 8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flattened codes -> uint8, `8 // bits` codes per byte, the first in the lowest bits."""
    per = 8 // bits
    flat = codes.reshape(-1).to(torch.int32)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % per)])
    shifts = torch.arange(per, dtype=torch.int32, device=flat.device) * bits
    return (flat.view(-1, per) << shifts).sum(1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """The inverse of `pack`: the first `numel` codes as int64."""
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32, device=packed.device) * bits
    codes = (packed.to(torch.int32)[:, None] >> shifts) & (2 ** bits - 1)
    return codes.reshape(-1)[:numel].long()
