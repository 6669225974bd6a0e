"""Fixed-support sparse weight deltas: the machinery DSEE, SaRA and APET (element level) share.

ΔW = s · scatter(values, index): `index` (a buffer) holds the flat positions, in the (out, in) layout,
of the entries that may change, sorted and unique; `values` (the only Parameter) holds their change.
So gradients and optimizer state exist for the selected entries alone.

The backward never forms a dense (out, in) gradient: the gradient of entry (o, i) is
Σ_tokens g[:, o] · x[:, i], and `gathered_grad` computes it for the rows of W that hold support
entries, a block of rows at a time (at most CHUNK entries and half the matrix per block, one GEMM
each), keeping only the entries on the support. SaRA's official code instead lets autograd build
the dense weight gradient and then gathers it. The forward, and the input gradient, use the weight
with the support added on the fly (W' = W + ΔW, a transient as in `kernels/lora.py`): one GEMM each.
"""

from __future__ import annotations

import torch
from torch import nn

from petkit.core.layer import Delta, add_to_weight, in_out_features, linear_nd, weight_oi

CHUNK = 2 ** 18  # entries of one row block of the gathered gradient (1 MB in fp32)


def sorted_support(index: torch.Tensor) -> torch.Tensor:
    """Flat positions as the sorted, unique int64 vector every sparse delta stores."""
    return torch.unique(index.reshape(-1).to(torch.int64))  # unique() sorts


def with_support(weight, values, index, shape, scale: float) -> torch.Tensor:
    """W + s·scatter(values) as a fresh contiguous (out, in) matrix; zeros + scatter when weight is None."""
    if weight is None:
        out = values.new_zeros(shape)
    else:
        out = weight.clone(memory_format=torch.contiguous_format)
    out.view(-1).index_add_(0, index, values.to(out.dtype), alpha=scale)
    return out


def gathered_grad(g2: torch.Tensor, x2: torch.Tensor, index: torch.Tensor, in_f: int) -> torch.Tensor:
    """dL/dΔW at the support: out[k] = Σ_n g2[n, row_k] · x2[n, col_k], for sorted flat `index`."""
    out = g2.new_empty(index.numel())
    if index.numel() == 0:
        return out
    rows = torch.div(index, in_f, rounding_mode="floor")
    cols = index - rows * in_f
    urows, inverse, counts = torch.unique_consecutive(rows, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).tolist()  # end (in the support) of each distinct row's entries
    step = max(1, min(CHUNK // in_f, (len(urows) + 1) // 2))
    start = 0
    for a in range(0, len(urows), step):
        b = min(a + step, len(urows))
        first, last = int(urows[a]), int(urows[b - 1])
        # consecutive rows are a strided view of g2; scattered rows need a gather
        gb = g2[:, first:last + 1] if last - first == b - a - 1 else g2[:, urows[a:b]]
        block = gb.t() @ x2  # (rows in this block, in)
        stop = ends[b - 1]
        out[start:stop] = block[inverse[start:stop] - a, cols[start:stop]]
        start = stop
    return out


class SparseLinearFn(torch.autograd.Function):
    """y = x (W + s·scatter(values))^T + b, with the gradient of `values` gathered at the support.

    weight may be None (the delta's own product, for the unfused path) or a transposed view (Conv1D).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, values, index, shape, scale: float):
        y = linear_nd(x, with_support(weight, values, index, shape, scale).t(), bias)
        ctx.save_for_backward(x, weight, values, index)
        ctx.shape, ctx.scale, ctx.has_bias = shape, scale, bias is not None
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, values, index = ctx.saved_tensors
        shape, scale = ctx.shape, ctx.scale
        need_x, need_w, need_b, need_v = ctx.needs_input_grad[:4]
        g2 = g.reshape(-1, shape[0])
        x2 = x.reshape(-1, shape[1])
        dx = dw = db = dv = None
        if need_v:
            dv = gathered_grad(g2, x2, index, shape[1]).mul_(scale).to(values.dtype)
        if need_x:
            dx = (g2 @ with_support(weight, values, index, shape, scale)).view(x.shape)
        if need_w:  # only when a user unfroze the base weight on purpose
            dw = g2.t() @ x2
        if need_b and ctx.has_bias:
            db = g2.sum(0)
        return dx, dw, db, dv, None, None, None


def sparse_linear(x, weight, bias, values, index, shape, scale: float = 1.0) -> torch.Tensor:
    return SparseLinearFn.apply(x, weight, bias, values, index, tuple(shape), float(scale))


class SparseDelta(Delta):
    """ΔW = scale · scatter(values, index) on a linear layer; values start at zero (the base model).

    Subclasses change `effective_values()` (e.g. SaRA's frozen entries) and keep everything else.
    """

    fused = True

    def __init__(self, base: nn.Module, index: torch.Tensor, scale: float = 1.0):
        super().__init__()
        in_f, out_f = in_out_features(base)
        self.shape = (out_f, in_f)
        self.scale = float(scale)
        self.register_buffer("index", sorted_support(index))
        self.values = nn.Parameter(torch.zeros(self.index.numel()))

    def effective_values(self, base: nn.Module) -> torch.Tensor:
        return self.values

    def fused_forward(self, base, x):
        if self.index.numel() == 0:
            return base(x)
        return sparse_linear(x, weight_oi(base), base.bias, self.effective_values(base), self.index,
                             self.shape, self.scale)

    def product(self, base, x):
        """x ΔW^T alone (no base term)."""
        return sparse_linear(x, None, None, self.effective_values(base), self.index, self.shape, self.scale)

    def forward(self, base, x, y):
        return y if self.index.numel() == 0 else y + self.product(base, x)

    def delta_weight(self, base):
        return with_support(None, self.effective_values(base), self.index, self.shape, self.scale)

    @torch.no_grad()
    def merge(self, base):
        add_to_weight(base, self.delta_weight(base).detach())

    @torch.no_grad()
    def unmerge(self, base):
        add_to_weight(base, self.delta_weight(base).detach(), sign=-1.0)

    def loaded(self):
        idx = self.index
        if idx.numel() and (idx[0] < 0 or idx[-1] >= self.shape[0] * self.shape[1] or (idx[1:] <= idx[:-1]).any()):
            raise ValueError(f"the sparse support must be sorted, unique positions below {self.shape[0] * self.shape[1]}")


def support_at(base: nn.Module, index: torch.Tensor) -> torch.Tensor:
    """The base weight's entries at flat (out, in) positions, without copying the whole weight."""
    w = weight_oi(base)
    rows = torch.div(index, w.shape[1], rounding_mode="floor")
    return w[rows, index - rows * w.shape[1]]
