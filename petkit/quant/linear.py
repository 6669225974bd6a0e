"""`PackedLinear`: a frozen linear layer stored as packed low-bit codes with per-group statistics.

Training (QLoRA-style) needs y = x Wᵀ + b and the input gradient g W, never a weight gradient. Both
dequantise W on the fly and drop it again: the autograd function saves no float weight, so the
memory a model holds is the packed codes (plus one layer's float weight at a time), at the price of
a second dequantisation in backward — what bitsandbytes does too (notes/low-bit.md §1.2). The
dequantisation runs in the native kernel (petkit.kernels.dequant) where it builds, else in PyTorch;
both give the same bits.

Inference may instead run the T-MAC lookup-table kernel (`lut=True`, int scheme, b ≤ 4): its weight
layout is built once, next to the packed codes (never instead of them: no mode-dependent in-place
repacking, and `state_dict()` has no side effects).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.module_types import Conv1D, QuantizedEmbedding, QuantizedLinear
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


class PackedRows:
    """Storage shared by the packed modules: a (rows, cols) float matrix as buffers `codes` (rows, packed
    bytes per row) uint8, `scales` and (int scheme) `zeros` (rows, cols/G), groups along rows."""

    def _init_storage(self, rows: int, cols: int, fmt: QuantFormat) -> None:
        if cols % fmt.group_size:
            raise ValueError(f"{self._cols_name}={cols} is not divisible by group_size={fmt.group_size}")
        self.format, self._cols = fmt, cols
        stat = formats.STAT_DTYPES[fmt.scheme]
        self.register_buffer("codes", torch.zeros(rows, formats.packed_row_bytes(cols, fmt.bits), dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(rows, cols // fmt.group_size, dtype=stat))
        self.register_buffer("zeros", torch.zeros(rows, cols // fmt.group_size, dtype=stat) if fmt.scheme == "int"
                             else None)

    @torch.no_grad()
    def store(self, weight: torch.Tensor) -> None:
        fmt = self.format
        codes, scales, zeros = formats.quantize_weight(weight, fmt.scheme, fmt.bits, fmt.group_size)
        self.codes.copy_(formats.pack(codes, fmt.bits))
        self.scales.copy_(scales)
        if zeros is not None:
            self.zeros.copy_(zeros)
        self._stored_changed()

    def _stored_changed(self) -> None:
        pass

    def unpacked_codes(self, rows=None) -> torch.Tensor:
        codes = self.codes if rows is None else self.codes[rows]
        return formats.unpack(codes.reshape(-1, codes.shape[-1]), self.format.bits, self._cols)

    def dequantize(self, dtype: torch.dtype = torch.float32, rows=None, out: torch.Tensor | None = None) -> torch.Tensor:
        """The float (rows, cols) matrix, or only the given rows (an integer index tensor, or a slice);
        written into `out` where the native kernel runs (see formats.dequantize_packed): use the result."""
        codes, scales, zeros, index = self.codes, self.scales, self.zeros, None
        if isinstance(rows, torch.Tensor) and not rows.is_floating_point() and rows.dtype != torch.bool:
            index = rows.reshape(-1)  # gathered inside the kernel: no copy of the selected codes
        elif rows is not None:
            codes, scales, zeros = codes[rows], scales[rows], None if zeros is None else zeros[rows]
        return formats.dequantize_packed(codes.reshape(-1, codes.shape[-1]), scales.reshape(-1, scales.shape[-1]),
                                         None if zeros is None else zeros.reshape(-1, zeros.shape[-1]),
                                         self.format.scheme, self.format.bits, self._cols, dtype, index=index, out=out)

    def _sample_stored(self, flat_index):
        values = self.dequantize().reshape(-1)[flat_index]
        group = self.scales.float().reshape(-1)[flat_index // self.format.group_size]
        # int: one step (a refit may clamp a group's extremes by up to a step); nf4: half the widest gap
        # (between -1 and the next level down: 0.304, wider than the top gap 1 - 0.723)
        bound = group if self.format.scheme == "int" else group * float(formats.NF4.diff().max()) / 2
        return values, bound

    def _apply(self, fn, *args, **kwargs):
        # model.to(dtype) may move the statistics but not change their format: bf16 scales would add
        # rounding the codes were not fitted for (and a merge's undo state would no longer match)
        out = super()._apply(fn, *args, **kwargs)
        stat = formats.STAT_DTYPES[self.format.scheme]
        self.scales.data = self.scales.data.to(stat)
        if self.zeros is not None:
            self.zeros.data = self.zeros.data.to(stat)
        return out

    def nbytes(self) -> int:
        """Bytes of the stored weight (codes and statistics; not a bias)."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.zeros) if t is not None)


class PackedLinear(PackedRows, QuantizedLinear):
    """A frozen linear layer: the (out, in) weight packed (`PackedRows`), a float bias."""

    _cols_name = "in_features"

    def __init__(self, in_features: int, out_features: int, fmt: QuantFormat, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_storage(out_features, in_features, fmt)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.lut = False  # inference through the LUT kernel (see use_lut)
        self._lut_weight = None
        self._merging = None  # the float weight while merging()
        self._undo: list[tuple] = []  # packed states before each merge, for an exact unmerge

    @classmethod
    def sharing(cls, embedding: "PackedEmbedding") -> "PackedLinear":
        """An output head tied to a packed embedding: the same buffers, read as an (vocab, dim) weight."""
        head = cls(embedding.embedding_dim, embedding.num_embeddings, embedding.format, bias=False)
        for name in ("codes", "scales", "zeros"):
            setattr(head, name, getattr(embedding, name))
        return head

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
    def _stored_changed(self) -> None:
        self._lut_weight = None

    @property
    def weight(self) -> torch.Tensor:
        return self._merging if self._merging is not None else self.dequantize()

    def float_shape(self):
        return (self.in_features, self.out_features) if self.transposed else (self.out_features, self.in_features)

    def sample(self, flat_index):
        if self.transposed:  # flat (in, out) positions -> flat (out, in) ones
            flat_index = (flat_index % self.out_features) * self.in_features + flat_index // self.out_features
        return self._sample_stored(flat_index)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # eval only: a training forward keeps the exact dequantised product even where x needs no gradient
        if self.lut and not self.training and not (torch.is_grad_enabled() and x.requires_grad):
            return self._lut_forward(x)
        return PackedLinearFn.apply(x, self, self.bias)

    def use_lut(self, enabled: bool = True) -> None:
        """Run inference forwards (eval mode, no gradient wanted) through the T-MAC kernel; training
        forwards keep dequantising. Needs the int scheme at 1–4 bits."""
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
                self._stored_changed()
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


# Rows of the float weight dequantised at once: a large layer (a 49k-token output head is 113 MB in fp32)
# is multiplied block by block, so the transient float weight stays near 4 MB whatever the layer's size.
BLOCK_ELEMENTS = 1 << 20


class PackedLinearFn(torch.autograd.Function):
    """y = x Wᵀ + b with W dequantised in forward and again in backward; nothing float is saved. No
    gradient for W (frozen); the bias gets one if it asks."""

    @staticmethod
    def forward(ctx, x, layer: PackedLinear, bias):
        ctx.layer = layer
        rows = _row_blocks(layer)
        scratch = _scratch(rows, layer, x.dtype)
        if len(rows) == 1:
            y = torch.matmul(x, layer.dequantize(x.dtype, out=scratch).t())
        else:
            y = x.new_empty(*x.shape[:-1], layer.out_features)
            for block in rows:
                w = layer.dequantize(x.dtype, rows=block,
                                     out=None if scratch is None else scratch[: block.stop - block.start])
                torch.matmul(x, w.t(), out=y[..., block])
        return y if bias is None else y.add_(bias.to(y.dtype))

    @staticmethod
    def backward(ctx, grad):
        grad_x = grad_bias = None
        layer = ctx.layer
        if ctx.needs_input_grad[0]:
            rows = _row_blocks(layer)
            scratch = _scratch(rows, layer, grad.dtype)
            g2 = grad.reshape(-1, grad.shape[-1])
            for block in rows:
                w = layer.dequantize(grad.dtype, rows=None if block == slice(None) else block,
                                     out=None if scratch is None else scratch[: _rows_in(block, layer)])
                # the blocks' products summed inside the GEMM (beta = 1), not through a temporary each
                grad_x = torch.mm(g2[:, block], w) if grad_x is None else grad_x.addmm_(g2[:, block], w)
            grad_x = grad_x.view(*grad.shape[:-1], layer.in_features)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, None, grad_bias


def _row_blocks(layer: PackedLinear) -> list:
    step = max(1, BLOCK_ELEMENTS // layer.in_features)
    if step >= layer.out_features:
        return [slice(None)]
    return [slice(i, min(i + step, layer.out_features)) for i in range(0, layer.out_features, step)]


_SCRATCH = threading.local()  # per thread: one float buffer of at most ~BLOCK_ELEMENTS, reused by every layer


def _rows_in(block: slice, layer: PackedLinear) -> int:
    return layer.out_features if block == slice(None) else block.stop - block.start


def _scratch(rows: list, layer: PackedLinear, dtype: torch.dtype):
    """The (rows of the first block, in_features) buffer the native kernel dequantises every block into,
    or None where the PyTorch path runs (it returns fresh tensors). Shared by all layers of a thread and
    only used between one dequantisation and its matmul: a fresh multi-MB tensor per call costs page
    faults (the allocator maps and unmaps it each time) comparable to the dequantisation itself."""
    from petkit.kernels import dequant

    if layer.codes.device.type != "cpu" or not dequant.supports(layer.format.scheme, layer.format.bits, dtype):
        return None
    shape = (_rows_in(rows[0], layer), layer.in_features)
    n = shape[0] * shape[1]
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.dtype != dtype or buf.numel() < n:
        buf = _SCRATCH.buf = torch.empty(n, dtype=dtype)
    return buf[:n].view(shape)


class PackedEmbedding(PackedRows, QuantizedEmbedding):
    """A frozen embedding table, packed; a lookup dequantises only the rows it reads."""

    _cols_name = "embedding_dim"

    def __init__(self, num_embeddings: int, embedding_dim: int, fmt: QuantFormat, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self._init_storage(num_embeddings, embedding_dim, fmt)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, fmt: QuantFormat) -> "PackedEmbedding":
        packed = cls(embedding.num_embeddings, embedding.embedding_dim, fmt, embedding.padding_idx)
        packed.store(embedding.weight)
        return packed

    def float_shape(self):
        return (self.num_embeddings, self.embedding_dim)

    def sample(self, flat_index):
        return self._sample_stored(flat_index)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        return self.dequantize(rows=flat).view(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        f = self.format
        return f"{self.num_embeddings}, {self.embedding_dim}, scheme={f.scheme}, bits={f.bits}, group_size={f.group_size}"
