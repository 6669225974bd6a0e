"""The one LoRA hot path for linear layers: y = x W^T + b + s · drop(x) A^T B^T.

A custom autograd function instead of composing nn ops, because on CPU the cost of LoRA is not
its FLOPs but the skinny GEMMs and copies around them (see shared/notes/performance-lora-cpu.md
and benchmarks/README.md for the measurements behind each choice):

* with dropout off, the weight is merged on the fly (W' = W + s·B·A, out·in·r FLOPs, small next to
  the N·in·out GEMM) so the forward is one GEMM plus `u = x A^T`, and the input gradient is one GEMM
  `g W'` instead of `g W + (g B) A`;
* only x and the (N, r) tensor u are saved; W' is rebuilt in backward rather than kept alive;
* every skinny GEMM is written in the orientation MKL runs fastest on CPU: u = x A^T, gB = g B,
  dA = (gB)^T x and dB = (u^T g)^T — the last one streams g about twice as fast as g^T u — and
  placed to read its activation while it is warm: u before the big forward GEMM, gB and dB before
  the big input-gradient GEMM;
* gradients nobody asked for (the input of the first layer, a frozen bias) are not computed;
* with no autograd graph to build (inference, or everything frozen) there is no u and nothing is
  saved: the forward is the merged GEMM alone.

W may be a transposed view (GPT-2 Conv1D); matmul takes it without a copy.
"""

from __future__ import annotations

import torch

from petkit.core.layer import linear_nd


def _merged(weight, A, B, scale):
    # clone + in-place addmm_ is ~2x faster than the out-of-place addmm (which copies W twice).
    return weight.clone().addmm_(B, A, alpha=scale)


def _dropout_mask(x2, p):
    return torch.empty_like(x2).bernoulli_(1.0 - p).div_(1.0 - p)


def _lora_forward(x, weight, bias, A, B, scale: float, p: float, keep_u: bool):
    """y = x W^T + b + s · drop(x) A^T B^T, and (u = drop(x) A^T if kept, the dropout mask)."""
    x2 = x.reshape(-1, weight.shape[1])
    mask = u = None
    if p > 0.0:
        # Dropout only on the adapter branch, so the base GEMM cannot absorb the low-rank term.
        mask = _dropout_mask(x2, p)
        u = (x2 * mask) @ A.t()
        y = linear_nd(x, weight.t(), bias)
        y.view(-1, y.shape[-1]).addmm_(u, B.t(), alpha=scale)
    else:
        if keep_u:
            u = x2 @ A.t()  # before the big GEMM, while x is still warm from whatever produced it
        y = linear_nd(x, _merged(weight, A, B, scale).t(), bias)
    return y, u, mask


class LoraLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, A, B, scale: float, p: float):
        y, u, mask = _lora_forward(x, weight, bias, A, B, scale, p, keep_u=ctx.needs_input_grad[4])
        ctx.scale, ctx.p = scale, p
        ctx.save_for_backward(x, weight, A, B, u, mask)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, A, B, u, mask = ctx.saved_tensors
        s = ctx.scale
        need_x, need_w, need_b, need_A, need_B = ctx.needs_input_grad[:5]
        g2 = g.reshape(-1, g.shape[-1])
        x2 = x.reshape(-1, weight.shape[1])
        dx = dw = db = dA = dB = None
        # The two skinny products that read g run first, while g is warm from the op that produced it.
        gB = g2 @ B if (need_A or (need_x and mask is not None)) else None  # (N, r)
        if need_B:
            dB = (u.t() @ g2).mul_(s).t()  # (r, out) product, handed back as an (out, r) view
        if need_x:
            if mask is None:
                dx = g2 @ _merged(weight, A, B, s)
            else:
                dx = g2 @ weight
                dx.add_((gB @ A).mul_(mask), alpha=s)
            dx = dx.view(x.shape)
        if need_A:
            xd = x2 if mask is None else x2 * mask
            dA = (gB.t() @ xd).mul_(s)
        if need_w:  # only when a user unfroze the base weight on purpose
            dw = g2.t() @ x2
        if need_b and ctx.has_bias:
            db = g2.sum(0)
        return dx, dw, db, dA, dB, None, None


def _needs_graph(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lora_linear(x, weight, bias, A, B, scale: float, p: float = 0.0) -> torch.Tensor:
    if _needs_graph(x, weight, bias, A, B):
        return LoraLinearFn.apply(x, weight, bias, A, B, scale, p)
    return _lora_forward(x, weight, bias, A, B, scale, p, keep_u=False)[0]  # no graph: nothing kept for backward


def lora_linear_routed(x, weight, As, Bt) -> torch.Tensor:
    """Mixed-adapter batch on one linear layer, in one batched computation instead of a loop.

    x: (S, ..., in) with S samples; As: (S, r, in) and Bt: (S, r, out), sample i's own factors s_i·A_i
    and B_i^T (zeros for a sample without an adapter here), Bt with the bias as an extra row (r+1, out)
    if the layer has one. Returns y_i = x_i W^T + b + s_i · x_i A_i^T B_i^T.

    The output buffer is written once by the low-rank product, with the bias folded in as an extra
    rank-1 term ([s·u, 1] @ [B^T; b]), and the base GEMM then accumulates into it in place. So the
    adapters cost one skinny bmm over x and nothing over the (N, out) output: the base layer would
    write the broadcast bias into its output buffer anyway.
    """
    S, out_f, in_f = x.shape[0], weight.shape[0], weight.shape[1]
    x3 = x.reshape(S, -1, in_f)
    u = torch.bmm(x3, As.transpose(1, 2))  # (S, T, r)
    if Bt.shape[1] > As.shape[1]:  # the bias row
        u = torch.cat([u, u.new_ones(S, u.shape[1], 1)], 2)
    y3 = torch.bmm(u, Bt)
    y3.view(-1, out_f).addmm_(x3.reshape(-1, in_f), weight.t())
    return y3.view(*x.shape[:-1], out_f)


def lora_linear_grouped(x, weight, bias, As, Bt, src, back) -> torch.Tensor:
    """The same mixed batch with the samples grouped by adapter, for few tokens per sample (decoding).

    As: (G, r, in) and Bt: (G, r, out) hold each group's factors once (s folded into A, no bias row);
    src: (G·m,) the sample behind each of the m places of every group (groups shorter than m repeat a
    sample, whose extra result is never read); back: (S,) each sample's place. So the adapters read
    each distinct adapter's factors once instead of once per sample, at the cost of a gather of x and
    of the (S, T, out) low-rank result: cheaper when T is small next to the rank.
    """
    S, out_f, in_f = x.shape[0], weight.shape[0], weight.shape[1]
    x3 = x.reshape(S, -1, in_f)
    T, G = x3.shape[1], As.shape[0]
    u = torch.bmm(x3.index_select(0, src).view(G, -1, in_f), As.transpose(1, 2))  # (G, m·T, r)
    y3 = torch.bmm(u, Bt).view(-1, T, out_f).index_select(0, back)  # (S, T, out), a tensor of its own
    if bias is not None:
        y3.add_(bias)
    y3.view(-1, out_f).addmm_(x3.reshape(-1, in_f), weight.t())
    return y3.view(*x.shape[:-1], out_f)
