"""Sentence embeddings the sentence-transformers way: the last hidden states of an encoder averaged
over the real (non-pad) tokens, then L2-normalised (all-MiniLM-L6-v2's recipe)."""

from __future__ import annotations

from collections.abc import Sequence

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


@torch.no_grad()
def embed_sentences(encoder: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 64,
                    max_length: int = 128) -> torch.Tensor:
    """Unit-norm sentence embeddings of texts (N, d) from a frozen encoder, in eval mode (no dropout)."""
    if not len(texts):
        raise ConfigError("no texts to embed")
    was_training = encoder.training
    encoder.eval()
    rows = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            rows.append(encode(encoder, batch["attention_mask"], input_ids=batch["input_ids"]))
    finally:
        encoder.train(was_training)
    return torch.cat(rows).float()
