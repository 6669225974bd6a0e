"""Sentence embeddings the sentence-transformers way: the last hidden states of an encoder averaged
over the real (non-pad) tokens, then L2-normalised (all-MiniLM-L6-v2's recipe)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.errors import ConfigError


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden (..., L, d) over the positions where mask (..., L) is non-zero."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(-2) / weights.sum(-2).clamp_min(1e-9)


def encode(encoder: nn.Module, attention_mask: torch.Tensor, *, input_ids: torch.Tensor | None = None,
           inputs_embeds: torch.Tensor | None = None, pool_mask: torch.Tensor | None = None,
           normalize: bool = True) -> torch.Tensor:
    """One row per sequence: the encoder's last hidden state mean-pooled over ``pool_mask`` (default:
    the attention mask), unit-norm unless ``normalize=False``. Give ``input_ids`` or ``inputs_embeds``
    (soft tokens); token types are all 0, as for a single sentence."""
    token_type_ids = torch.zeros_like(attention_mask)
    hidden = encoder(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                     token_type_ids=token_type_ids).last_hidden_state
    pooled = masked_mean(hidden, attention_mask if pool_mask is None else pool_mask)
    return F.normalize(pooled, dim=-1) if normalize else pooled


@contextmanager
def evaluating(model: nn.Module):
    """Dropout off while reading features; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def embed_sentences(model: nn.Module, tokenizer, texts: Sequence[str], *, layer: int | None = None,
                    normalize: bool = True, batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
    """(N, d) sentence embeddings from a frozen encoder in eval mode: the token states of the last layer
    (or of hidden state ``layer``: 0 the embeddings, i block i) averaged over the real tokens, unit-norm
    unless ``normalize=False``. ``model`` is a bare encoder, a model with a head (the head is skipped)
    or an AdaptedModel (its adapters are part of the features)."""
    if not len(texts):
        raise ConfigError("no texts to embed")
    inner = getattr(model, "base", model)  # an AdaptedModel runs its user's model, adapters included
    encoder = getattr(inner, "base_model", inner)
    rows = []
    with evaluating(encoder):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            out = encoder(**batch, output_hidden_states=layer is not None)
            states = out.last_hidden_state if layer is None else out.hidden_states[layer]
            rows.append(masked_mean(states, batch["attention_mask"]))
    features = torch.cat(rows).float()
    return F.normalize(features, dim=-1) if normalize else features
