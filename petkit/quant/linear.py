"""`PackedLinear`: a frozen linear layer stored as packed low-bit codes with per-group statistics.

Training (QLoRA-style) needs y = x Wᵀ + b and the input gradient g W, never a weight gradient. Both
dequantise W on the fly and drop it again: the autograd function saves no float weight, so the
memory a model holds is the packed codes (plus one layer's float weight at a time), at the price of
a second dequantisation in backward — what bitsandbytes does too (notes/low-bit.md §1.2).

Inference may instead run the T-MAC lookup-table kernel (`lut=True`, int scheme, b ≤ 4): its weight
layout is built once, next to the packed codes (never instead of them: no mode-dependent in-place
repacking, and `state_dict()` has no side effects).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.module_types import Conv1D, QuantizedLinear
from petkit.quant import formats


@dataclass(frozen=True)
class QuantFormat:
    scheme: str
    bits: int
    group_size: int

    def __post_init__(self):
        formats.check_format(self.scheme, self.bits, self.group_size)

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "bits": self.bits, "group_size": self.group_size}


@dataclass
class MergeRecord:
    weight_error: float = float("nan")  # ‖Q(W') − W'‖ / ‖W'‖ for the merged float weight W'
    delta_error: float = float("nan")   # ‖Q(W') − W'‖ / ‖W' − Ŵ‖: the share of the change lost to rounding


class PackedLinear(QuantizedLinear):
    """Buffers: `codes` (out, packed bytes per row) uint8, `scales` and (int scheme) `zeros` (out, in/G)."""

    def __init__(self, in_features: int, out_features: int, fmt: QuantFormat, bias: bool = True):
        super().__init__()
        if in_features % fmt.group_size:
            raise ValueError(f"in_features={in_features} is not divisible by group_size={fmt.group_size}")
        self.in_features, self.out_features, self.format = in_features, out_features, fmt
        groups = in_features // fmt.group_size
        stat = formats.STAT_DTYPES[fmt.scheme]
        self.register_buffer("codes", torch.zeros(out_features, formats.packed_row_bytes(in_features, fmt.bits),
                                                  dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=stat))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=stat) if fmt.scheme == "int" else None)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.lut = False  # inference through the LUT kernel (see use_lut)
        self._lut_weight = None
        self._merging = None  # the float weight while merging()
        self._undo: list[tuple] = []  # packed states before each merge, for an exact unmerge

    @classmethod
    def from_linear(cls, linear: nn.Module, fmt: QuantFormat, weight: torch.Tensor | None = None) -> "PackedLinear":
        """Quantise a float linear layer (its weight as (out, in), e.g. a transposed Conv1D's)."""
        w = linear.weight if weight is None else weight
        layer = cls(w.shape[1], w.shape[0], fmt, bias=getattr(linear, "bias", None) is not None)
        layer.store(w)
        layer.transposed = bool(Conv1D) and isinstance(linear, Conv1D)
        if layer.bias is not None:
            layer.bias.data = linear.bias.detach().float().clone()
        return layer

    # -- the weight --------------------------------------------------------------------------------
    @torch.no_grad()
    def store(self, weight: torch.Tensor) -> None:
        fmt = self.format
        codes, scales, zeros = formats.quantize_weight(weight, fmt.scheme, fmt.bits, fmt.group_size)
        self.codes.copy_(formats.pack(codes, fmt.bits))
        self.scales.copy_(scales)
        if zeros is not None:
            self.zeros.copy_(zeros)
        self._lut_weight = None

    def unpacked_codes(self) -> torch.Tensor:
        return formats.unpack(self.codes, self.format.bits, self.in_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return formats.dequantize_codes(self.unpacked_codes(), self.scales, self.zeros, self.format.scheme, dtype)

    @property
    def weight(self) -> torch.Tensor:
        return self._merging if self._merging is not None else self.dequantize()

    def sample(self, flat_index):
        values = self.dequantize().reshape(-1)[flat_index]
        group = self.scales.float().reshape(-1)[flat_index // self.format.group_size]
        # int: one step (a refit may clamp a group's extremes by up to a step); nf4: half the widest gap
        # (between -1 and the next level down: 0.304, wider than the top gap 1 - 0.723)
        bound = group if self.format.scheme == "int" else group * float(formats.NF4.diff().max()) / 2
        return values, bound

    def nbytes(self) -> int:
        """Bytes of the stored weight (codes and statistics; not the bias)."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.zeros) if t is not None)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lut and not (torch.is_grad_enabled() and x.requires_grad):
            return self._lut_forward(x)
        return PackedLinearFn.apply(x, self, self.bias)

    def use_lut(self, enabled: bool = True) -> None:
        """Run inference forwards (no gradient wanted) through the T-MAC kernel; training forwards
        keep dequantising. Needs the int scheme at 1–4 bits."""
        if enabled and (self.format.scheme != "int" or self.format.bits > 4):
            raise ValueError(f"the LUT kernel takes the int scheme at 1–4 bits, this layer is "
                             f"{self.format.scheme} at {self.format.bits} bits")
        self.lut, self._lut_weight = enabled, None

    def _lut_forward(self, x):
        from petkit.kernels.lut import lut_matmul, pack_lut

        if self._lut_weight is None:
            b = self.format.bits
            # ours: w = scale·q + zero; the kernel's: w = scale·(q − 2^(b−1)) + zero'
            scales, zeros = self.scales.float(), self.zeros.float()
            self._lut_weight = pack_lut(self.unpacked_codes(), scales, zeros + scales * 2 ** (b - 1), b,
                                        self.format.group_size)
        y = lut_matmul(x.float(), self._lut_weight).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    # -- merging -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def merging(self, undo: bool = False):
        record = MergeRecord()
        before = self.dequantize()
        self._merging = before.clone()
        try:
            yield record
            if undo:
                codes, scales, zeros = self._undo.pop()
                self.codes.copy_(codes)
                self.scales.copy_(scales)
                if zeros is not None:
                    self.zeros.copy_(zeros)
                self._lut_weight = None
            else:
                merged = self._merging
                self._undo.append(tuple(None if t is None else t.clone() for t in (self.codes, self.scales, self.zeros)))
                self.store(merged)
                lost = (self.dequantize() - merged).norm()
                record.weight_error = float(lost / merged.norm().clamp_min(1e-30))
                record.delta_error = float(lost / (merged - before).norm().clamp_min(1e-30))
        finally:
            self._merging = None

    def extra_repr(self) -> str:
        f = self.format
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"scheme={f.scheme}, bits={f.bits}, group_size={f.group_size}{', lut' if self.lut else ''}")


class PackedLinearFn(torch.autograd.Function):
    """y = x Wᵀ + b with W dequantised in forward and again in backward; nothing float is saved but x's
    shape. No gradient for W (frozen); the bias gets one if it asks."""

    @staticmethod
    def forward(ctx, x, layer: PackedLinear, bias):
        ctx.layer = layer
        w = layer.dequantize(x.dtype)
        y = torch.matmul(x, w.t())
        return y if bias is None else y.add_(bias.to(y.dtype))

    @staticmethod
    def backward(ctx, grad):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(grad, ctx.layer.dequantize(grad.dtype))
        if ctx.needs_input_grad[2]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, None, grad_bias
