"""The rank-1 factors of a linear layer's gradient, read with hooks instead of forming the gradient.

For y = W u at every token n, ∂L/∂W = Σ_n δ_n u_nᵀ with u_n the layer's input (a forward hook) and
δ_n = ∂L/∂y_n (a hook on the output tensor). MEND edits these (u, δ) pairs. Padding tokens are
dropped by the attention mask: their δ is zero under a masked loss, but their u is not, and an
editor that is not linear would otherwise turn them into an update.
"""

from __future__ import annotations

import torch
from torch import nn

from petkit.core.errors import StateError


class GradientFactors:
    """Within `with GradientFactors(modules) as cap:` one forward and one backward of the model fill
    `cap.inputs[name]` (u, shape [..., in]) and `cap.grads[name]` (δ, shape [..., out]) for each module."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.inputs: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> GradientFactors:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, name: str):
        def hook(module, args, output):
            if name in self.inputs:
                raise StateError(f"{name} ran twice in one forward; MEND edits layers that run once per token")
            self.inputs[name] = args[0].detach()
            if output.requires_grad:
                output.register_hook(lambda grad: self.grads.__setitem__(name, grad.detach()))
        return hook

    def factors(self, mask: torch.Tensor | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{name: (u rows [N, in], δ rows [N, out])} over the tokens where mask ([batch, seq]) is true."""
        missing = [n for n in self.modules if n not in self.grads]
        if missing:
            raise StateError(f"no gradient reached {', '.join(missing)}: run a forward and a backward inside the capture")
        out = {}
        for name in self.modules:
            u, delta = self.inputs[name], self.grads[name]
            if mask is not None:
                keep = mask.bool().reshape(-1)
                u, delta = u.reshape(keep.numel(), -1)[keep], delta.reshape(keep.numel(), -1)[keep]
            out[name] = (u.reshape(-1, u.shape[-1]), delta.reshape(-1, delta.shape[-1]))
        return out


def rank_one_sum(u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Σ_n δ_n u_nᵀ, the (out, in) gradient the factors stand for."""
    return torch.einsum("ni,nj->ij", delta, u)
