"""A language model's training loss from the labelled positions only.

In supervised fine-tuning most positions are prompt or padding (label -100), yet a model called with
``labels`` projects every position through the LM head (tokens × vocabulary: the largest matmul and
activation of a small decoder) before its loss ignores them. Hugging Face causal LMs take
``logits_to_keep`` as a boolean (batch, sequence) mask and then project only the kept positions; the
mean cross-entropy over them is exactly the model's own loss (the same terms, the same mean). Used
when a batch has positions to skip and the model can skip them; otherwise the model's own loss.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.errors import ConfigError
from petkit.data.batches import IGNORE_INDEX

# Below this share of labelled positions the gather pays for itself; a plain LM batch (all labelled) gains nothing.
MAX_LABELLED_SHARE = 0.9


def can_keep_labelled_logits(model: nn.Module) -> bool:
    """Whether the model's LM head takes a position mask: a Hugging Face causal LM whose forward has
    `logits_to_keep`, wrapped at most by DDP/FSDP and an AdaptedModel without model-level adapters (a
    prompt or side network changes the sequence the mask would index)."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    deltas = getattr(inner, "model_deltas", None)
    if deltas is not None:
        if len(deltas):
            return False
        inner = inner.base
    forward = getattr(inner, "forward", None)
    return forward is not None and "logits_to_keep" in inspect.signature(forward).parameters


def training_loss(model: nn.Module, batch: dict, task: str, labelled_only: bool = False) -> torch.Tensor:
    """The model's mean loss on a batch; for a causal LM with `labelled_only`, computed from the labelled
    positions alone when few enough are labelled (-100 = not scored)."""
    if task != "causal_lm" or "labels" not in batch:
        return _own_loss(model, batch)
    labels = batch["labels"]
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    if not labelled_only or scored.float().mean() > MAX_LABELLED_SHARE:
        return _own_loss(model, batch)
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = scored  # position t predicts token t+1
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**{**inputs, "use_cache": False}, logits_to_keep=keep).logits  # packed rows carry it too
    if logits.shape[0] != int(keep.sum()) or logits.dim() != 2:
        raise ConfigError(f"{type(model).__name__} ignored the position mask (logits {tuple(logits.shape)} for "
                          f"{int(keep.sum())} labelled positions)")
    if not len(logits):  # nothing scored here (an empty shard at weight 0): a zero that still has a graph
        return logits.sum()
    return F.cross_entropy(logits.float(), targets[scored])


def _own_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    out = model(**batch)
    if getattr(out, "loss", None) is None:
        raise ConfigError(f"the model returned no loss: do the batches carry 'labels'? (keys: {sorted(batch)})")
    return out.loss
