"""The one LoRA hot path for linear layers: y = x W^T + b + s · drop(x) A^T B^T.

A custom autograd function instead of composing nn ops, because on CPU the cost of LoRA is not
its FLOPs but the skinny GEMMs and copies around them (see shared/notes/performance-lora-cpu.md):

* with dropout off, the weight is merged on the fly (W' = W + s·B·A, out·in·r FLOPs, small next to
  the N·in·out GEMM) so the forward is one GEMM plus `u = x A^T`, and the input gradient is one GEMM
  `g W'` instead of `g W + (g B) A`;
* only x and the (N, r) tensor u are saved; W' is rebuilt in backward rather than kept alive;
* gradients nobody asked for (the input of the first layer, a frozen bias) are not computed.

W may be a transposed view (GPT-2 Conv1D); matmul takes it without a copy.
"""

from __future__ import annotations

import torch


class LoraLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, A, B, scale: float, p: float):
        in_f = weight.shape[1]
        shape = x.shape
        x2 = x.reshape(-1, in_f)
        mask = None
        if p > 0.0:
            # Dropout only on the adapter branch, so the base GEMM cannot absorb the low-rank term.
            mask = torch.empty_like(x2).bernoulli_(1.0 - p).div_(1.0 - p)
            xd = x2 * mask
            u = xd @ A.t()
            y = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
            y.addmm_(u, B.t(), alpha=scale)
        else:
            merged = torch.addmm(weight, B, A, alpha=scale)
            y = x2 @ merged.t() if bias is None else torch.addmm(bias, x2, merged.t())
            u = x2 @ A.t()
        ctx.scale, ctx.p = scale, p
        ctx.save_for_backward(x, weight, A, B, u, mask)
        ctx.has_bias = bias is not None
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, g):
        x, weight, A, B, u, mask = ctx.saved_tensors
        s = ctx.scale
        need_x, need_w, need_b, need_A, need_B = ctx.needs_input_grad[:5]
        g2 = g.reshape(-1, g.shape[-1])
        x2 = x.reshape(-1, weight.shape[1])
        dx = dw = db = dA = dB = None
        gB = g2 @ B if (need_A or (need_x and mask is not None)) else None  # (N, r)
        if need_x:
            if mask is None:
                dx = g2 @ torch.addmm(weight, B, A, alpha=s)
            else:
                dx = g2 @ weight
                dx.add_((gB @ A).mul_(mask), alpha=s)
            dx = dx.view(x.shape)
        if need_A:
            xd = x2 if mask is None else x2 * mask
            dA = (gB.t() @ xd).mul_(s)
        if need_B:
            dB = (g2.t() @ u).mul_(s)
        if need_w:  # only when a user unfroze the base weight on purpose
            dw = g2.t() @ x2
        if need_b and ctx.has_bias:
            db = g2.sum(0)
        return dx, dw, db, dA, dB, None, None


def lora_linear(x, weight, bias, A, B, scale: float, p: float = 0.0) -> torch.Tensor:
    return LoraLinearFn.apply(x, weight, bias, A, B, scale, p)
