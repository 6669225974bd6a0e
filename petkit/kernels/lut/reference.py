"""The T-MAC bit-serial LUT matmul in plain PyTorch: the specification the native kernel must match.

With ±1 plane bits b'_i = 2·bit_i − 1, a b-bit code gives q − 2^(b−1) = Σ_i 2^(i−1) b'_i − ½, so
  Σ_k W[m, k] a_k = Σ_g scale[m, g] · (Σ_i α_i C_i[m, g] − ½ S_g) + zero[m, g] · S_g
with α = (½, 1, 2, 4), S_g = Σ_{k∈g} a_k and C_i[m, g] = Σ_j T_j[idx_i(m, j)]: one lookup per plane,
row and 4-activation group j in the 16-entry table T_j[c] = Σ_r (a_{4j+r} if bit r of c else −a_{4j+r}).
"""

from __future__ import annotations

import torch

from petkit.kernels.lut.pack import LutWeight, row_major, unpack_indices

# Signs of the 8 table entries that are computed; bit 3 clear, so a_3 always enters negatively.
_SIGNS = torch.tensor([[1.0 if (c >> r) & 1 else -1.0 for r in range(4)] for c in range(8)])


def build_tables(x: torch.Tensor) -> torch.Tensor:
    """(N, K) → (N, K // 4, 16) float tables; entries 8..15 mirror 7..0 (T[15 − c] = −T[c])."""
    groups = x.view(x.shape[0], -1, 4)
    half = groups[..., 0, None] * _SIGNS[:, 0]
    for r in range(1, 4):  # left to right, the order the native kernel sums in
        half = half + groups[..., r, None] * _SIGNS[:, r]
    return torch.cat([half, -half.flip(-1)], dim=-1)


def quantize_tables(tables: torch.Tensor, x: torch.Tensor, act_group_size: int):
    """int8 tables (as float) and their per activation-group scale max Σ|a| / 127 (N, K // A ceil)."""
    a = x.abs().view(x.shape[0], -1, 4)
    reach = ((a[..., 0] + a[..., 1]) + a[..., 2]) + a[..., 3]  # largest |entry| of each table
    per_group = act_group_size // 4
    pad = (-reach.shape[1]) % per_group
    peak = torch.nn.functional.pad(reach, (0, pad)).view(x.shape[0], -1, per_group).amax(-1)
    # a true division: `127.0 / peak` is reciprocal-then-multiply in PyTorch, rounded twice
    inv = torch.where(peak > 0, torch.full_like(peak, 127.0) / peak, torch.zeros_like(peak))
    inv_per_table = inv.repeat_interleave(per_group, dim=1)[:, : tables.shape[1], None]
    return torch.round(tables * inv_per_table).clamp(-127, 127), peak / 127.0


def lut_reference(x: torch.Tensor, w: LutWeight, act_group_size: int = 64, quantize: bool = True,
                  return_lookups: bool = False):
    """y = x @ Wᵀ by table lookups. `quantize` uses int8 tables as the native kernel does."""
    K, G = w.in_features, w.group_size
    x2 = x.reshape(-1, K).to(torch.float32)
    tables = build_tables(x2)
    if quantize:
        tables, scale = quantize_tables(tables, x2, act_group_size)
        tables = tables * scale.repeat_interleave(act_group_size // 4, dim=1)[:, : K // 4, None]
    idx = unpack_indices(w)  # (b, M_pad, K // 4)
    alphas = torch.tensor([0.5, 1.0, 2.0, 4.0][: w.bits]).view(-1, 1, 1)
    scales, zeros = row_major(w.scales), row_major(w.zeros)
    sums = x2.view(-1, K // G, G).sum(-1)  # S_g
    out, lookups = [], 0
    cols = torch.arange(K // 4)
    for n in range(x2.shape[0]):  # one row at a time keeps the gathered block small
        looked_up = tables[n][cols, idx]  # (b, M_pad, K // 4): one lookup per plane, row and group
        lookups += looked_up.numel()
        planes = looked_up.view(w.bits, -1, K // G, G // 4).sum(-1)  # C_i[m, g]
        per_group = scales * ((alphas * planes).sum(0) - 0.5 * sums[n])
        if zeros is not None:
            per_group = per_group + zeros * sums[n]
        out.append(per_group.sum(-1)[: w.out_features])
    y = torch.stack(out).reshape(*x.shape[:-1], w.out_features)
    return (y, lookups) if return_lookups else y
