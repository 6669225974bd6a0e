"""Zero-shot classification with hand-written templates: the class embedding is the sentence
embedding of the filled template; an ensemble averages the unit-norm embeddings of several templates
and re-normalises (CLIP's prompt ensembling)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.errors import ConfigError
from petkit.models.pooling import embed_sentences


def template_class_embeddings(encoder: nn.Module, tokenizer, class_names: list[str],
                              templates: list[str]) -> torch.Tensor:
    """(T, K, d) unit-norm embeddings of every template filled with every class name ("{}" marks the name)."""
    bad = [t for t in templates if not isinstance(t, str) or "{}" not in t]
    if not templates or bad:
        raise ConfigError(f"templates must be strings with a '{{}}' for the class name; got {bad or templates!r}")
    texts = [t.format(name) for t in templates for name in class_names]
    return embed_sentences(encoder, tokenizer, texts).reshape(len(templates), len(class_names), -1)


def ensemble(class_embeddings: torch.Tensor) -> torch.Tensor:
    """(K, d): the templates' class embeddings averaged over T and re-normalised."""
    return F.normalize(class_embeddings.mean(0), dim=-1)


def zero_shot_accuracy(features: torch.Tensor, labels: torch.Tensor, class_embeddings: torch.Tensor) -> float:
    """Accuracy of argmax cos(f(x), g_c) for one (K, d) set of class embeddings."""
    preds = (F.normalize(features, dim=-1) @ class_embeddings.T).argmax(-1)
    return (preds == labels).float().mean().item()
