"""Sentence features from a transformers encoder: mean pooling as sentence-transformers does it, and a
classifier's logits with the features its head reads (its penultimate layer).

Both the OOD detectors (`petkit.analysis.ood`) and the moral direction (`petkit.analysis.moral`) work in
these spaces, so they share this one reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from petkit.core.errors import ConfigError
from petkit.models.pooling import masked_mean


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


def _batches(tokenizer, texts: list[str], batch_size: int, max_length: int):
    for start in range(0, len(texts), batch_size):
        yield tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")


@contextmanager
def _evaluating(model: nn.Module):
    """Dropout off while reading features; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def num_hidden_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def check_layer(model: nn.Module, layer: int | None) -> None:
    """`layer` indexes the hidden states: 0 is the embedding output, 1..L the blocks (negative from the end)."""
    if layer is None:
        return
    n = num_hidden_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -(n + 1) <= layer <= n:
        raise ConfigError(f"layer must be an int in 0..{n} (0: the embeddings, {n}: the last block; "
                          f"negative counts from the end), got {layer!r}: this model has {n} layers")


@torch.no_grad()
def sentence_embeddings(model: nn.Module, tokenizer, texts: Sequence[str], *, layer: int | None = None,
                        normalize: bool = False, batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
    """(N, hidden) mean of the token states over the attention mask (padding left out), at the last layer
    or hidden state `layer`; `normalize` L2-normalises each row (sentence-transformers' Normalize module).

    `model` is a bare encoder or a model with a head: the head is skipped (its `base_model` is run).
    """
    texts = checked_texts(texts, "texts")
    check_layer(model, layer)
    inner = getattr(model, "base", model)  # an AdaptedModel runs its user's model, adapters included
    encoder = getattr(inner, "base_model", inner)
    out = []
    with _evaluating(encoder):
        for batch in _batches(tokenizer, texts, batch_size, max_length):
            result = encoder(**batch, output_hidden_states=layer is not None)
            states = result.last_hidden_state if layer is None else result.hidden_states[layer]
            out.append(masked_mean(states, batch["attention_mask"]).float())
    features = torch.cat(out)
    return nn.functional.normalize(features, dim=-1) if normalize else features


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
        with _evaluating(model):
            for batch in _batches(tokenizer, texts, batch_size, max_length):
                logits.append(model(**batch).logits.float())
    finally:
        handle.remove()
    features = torch.cat(seen)
    if features.dim() == 3:  # decoder heads score every position; the model reads the last real token
        raise ConfigError("classifier_outputs supports heads over pooled features (encoder classifiers) only")
    return torch.cat(logits), features
