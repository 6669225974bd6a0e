"""LoRAPrune's importance estimate (Zhang et al., ACL Findings 2024, arXiv 2305.18403): how much each
frozen weight matters, from the gradients of a LoRA on it alone, without the frozen weight's gradient.

With a LoRA W' = W + s·B·A and G_A, G_B the gradients of its factors, one gradient step would move the
factors to (A − G_A, B − G_B) and BA to (B − G_B)(A − G_A); the change of the product,

    Ĝ = BA − (B − G_B)(A − G_A) = G_B·A + B·G_A − G_B·G_A,

stands in for ∂L/∂W, and the weight's importance is the first-order Taylor term |Ĝ ⊙ (W + s·B·A)|,
against the true |∂L/∂W ⊙ W| that needs the full gradient of the frozen weight. Both are (out, in).
Groups: one score per output row (an FFN channel of an up/gate projection, a head's rows of q/k/v
summed over the head) or per input column (the same channel or head of a down/output projection).
"""

from __future__ import annotations

import torch

from petkit.core.errors import StateError
from petkit.core.layer import weight_oi
from petkit.core.module_types import Conv1D


def lora_gradient_estimate(delta) -> torch.Tensor:
    """Ĝ from a LoRA delta's factors and their gradients (after backward)."""
    A, B = delta.A.flatten(1), delta.B.flatten(1)
    if delta.A.grad is None or delta.B.grad is None:
        raise StateError("the LoRA factors have no gradients: run backward on a loss first")
    gA, gB = delta.A.grad.flatten(1), delta.B.grad.flatten(1)
    return gB @ A + B @ gA - gB @ gA


def lora_importance(delta, base) -> torch.Tensor:
    """|Ĝ ⊙ (W + s·B·A)|, (out, in)."""
    with torch.no_grad():
        merged = weight_oi(base).float() + delta.delta_weight(base).float()
        return (lora_gradient_estimate(delta).float() * merged).abs()


def true_importance(base) -> torch.Tensor:
    """|∂L/∂W ⊙ W| from the frozen weight's own gradient (its requires_grad turned on for the backward)."""
    if base.weight.grad is None:
        raise StateError("the weight has no gradient: turn its requires_grad on and run backward")
    stored = (base.weight.grad * base.weight.detach()).abs()
    return stored.t() if Conv1D and isinstance(base, Conv1D) else stored  # Conv1D stores (in, out)


def group_scores(importance: torch.Tensor, along: str, size: int = 1) -> torch.Tensor:
    """Summed importance per group of `size` consecutive output rows (along="rows") or input columns
    (along="columns"): an FFN channel is size 1, an attention head its head dimension."""
    per = importance.sum(1) if along == "rows" else importance.sum(0)
    if per.numel() % size:
        raise ValueError(f"{per.numel()} {along} do not split into groups of {size}")
    return per.view(-1, size).sum(1)
