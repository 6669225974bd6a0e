"""Sentence features from a transformers encoder: mean pooling as sentence-transformers does it, and a
classifier's logits with the features its head reads (its penultimate layer).

Both the OOD detectors (`petkit.analysis.ood`) and the moral direction (`petkit.analysis.moral`) work in
these spaces, so they share this one reader.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from petkit.core.errors import ConfigError
from petkit.models.pooling import embed_sentences, evaluating


def checked_texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise ConfigError(f"{what} must be a list of strings, got a single string {texts[:40]!r}")
    texts = list(texts)
    if not texts:
        raise ConfigError(f"{what} is empty: give at least one text")
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise ConfigError(f"{what} must hold strings only, found {type(bad[0]).__name__}")
    return texts


def num_hidden_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def check_layers(layers: Sequence[int], num_blocks: int, *, from_end: bool = False) -> None:
    """A ConfigError naming the valid range if a layer is not in 0..num_blocks (0: the embeddings,
    num_blocks: the last block's output); with ``from_end``, negative indices count from the end."""
    low = -(num_blocks + 1) if from_end else 0
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not low <= i <= num_blocks]
    if bad:
        end = "; negative counts from the end" if from_end else ""
        raise ConfigError(f"layer(s) {bad} do not exist: this model has layers 0..{num_blocks} "
                          f"(0 = embeddings, {num_blocks} = the last block's output{end})")


def check_layer(model: nn.Module, layer: int | None) -> None:
    """`layer` indexes the hidden states: 0 is the embedding output, 1..L the blocks (negative from the end)."""
    if layer is not None:
        check_layers([layer], num_hidden_layers(model), from_end=True)


def sentence_embeddings(model: nn.Module, tokenizer, texts: Sequence[str], *, layer: int | None = None,
                        normalize: bool = False, batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
    """(N, hidden) mean of the token states over the attention mask (padding left out), at the last layer
    or hidden state `layer`; `normalize` L2-normalises each row (sentence-transformers' Normalize module).
    `model` is a bare encoder or a model with a head: the head is skipped."""
    texts = checked_texts(texts, "texts")
    check_layer(model, layer)
    return embed_sentences(model, tokenizer, texts, layer=layer, normalize=normalize, batch_size=batch_size,
                           max_length=max_length)


def classifier_head(model: nn.Module) -> nn.Module:
    """The module that turns features into logits (transformers names it classifier or score)."""
    for name in ("classifier", "score"):
        head = getattr(getattr(model, "base", model), name, None)
        if isinstance(head, nn.Module):
            while not isinstance(head, nn.Linear) and isinstance(getattr(head, "out_proj", None), nn.Module):
                head = head.out_proj  # RoBERTa-style heads: dense + out_proj; the features are out_proj's input
            return head
    raise ConfigError(f"{type(model).__name__} has no classifier or score head to read logits and features from")


@torch.no_grad()
def classifier_outputs(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 64,
                       max_length: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C), penultimate features (N, d)): the features are what the last linear layer of the
    head reads, caught by a hook, so an adapter anywhere in the body is part of them."""
    texts = checked_texts(texts, "texts")
    head = classifier_head(model)
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().float()))
    logits = []
    try:
        with evaluating(model):
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")
                logits.append(model(**batch).logits.float())
    finally:
        handle.remove()
    features = torch.cat(seen)
    if features.dim() == 3:  # decoder heads score every position; the model reads the last real token
        raise ConfigError("classifier_outputs supports heads over pooled features (encoder classifiers) only")
    return torch.cat(logits), features
