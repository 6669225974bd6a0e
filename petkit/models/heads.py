"""Adapters with their own classification head (HST, IDPT): their logits replace the model's, and the
loss is recomputed from them by the model's own rule."""

from __future__ import annotations

import torch
from torch import nn

CLASSIFIERS = ("ForSequenceClassification", "ForImageClassification")


def is_classifier(hf: nn.Module) -> bool:
    """One label set per sequence or image (what an adapter's own head can replace)."""
    return type(hf).__name__.endswith(CLASSIFIERS) and isinstance(getattr(hf.config, "num_labels", None), int)


def with_logits(out, logits: torch.Tensor, labels: torch.Tensor | None, config):
    """out with these logits, and its loss recomputed from them as transformers' sequence classifiers
    do: regression for one label, cross-entropy for integer labels, else multi-label BCE (or as
    config.problem_type says)."""
    out.logits = logits
    if labels is None:
        return out
    kind = config.problem_type or ("regression" if config.num_labels == 1 else "single_label_classification"
                                   if labels.dtype in (torch.long, torch.int) else "multi_label_classification")
    if kind == "regression":
        flat = config.num_labels == 1
        out.loss = nn.functional.mse_loss(logits.view(-1) if flat else logits,
                                          (labels.view(-1) if flat else labels).to(logits.dtype))
    elif kind == "single_label_classification":
        out.loss = nn.functional.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    else:
        out.loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return out
