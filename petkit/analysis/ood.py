"""PT-OOD (Miyai et al., arXiv 2310.00847): detect out-of-distribution inputs by kNN in the *frozen
pre-trained* feature space instead of with the fine-tuned classifier's logits.

    bank = OODBank.build(encoder, tokenizer, id_train_texts, k=10)   # L2-normalised mean-pooled features
    bank.save("runs/sst2-bank", encoder)                              # safetensors + JSON with the fingerprint
    bank = OODBank.load("runs/sst2-bank", encoder)                    # refused for any other model
    id_like = bank.score(encoder, tokenizer, texts)                   # −distance to the k-th neighbour
    detection_metrics(id_like[:n], id_like[n:])                       # {"auroc": ..., "fpr95": ...}

The logit scores (MSP, max-logit, energy) and Mahalanobis live in `ood_scores`; `logit_scores` gives
all three for a classifier's logits. The paper's point: for OOD whose content the backbone saw in
pre-training ("familiar" OOD), a linear probe's or a fine-tuned model's decision boundary separates it
poorly, while its instance-level neighbourhood in the pre-trained space still does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from petkit.analysis.embed import check_layer, sentence_embeddings
from petkit.analysis.ood_scores import LOGIT_SCORES, knn_score
from petkit.analysis.stored import encoder_fingerprint, load_artefact, model_mismatch, save_artefact
from petkit.core.errors import BaseModelMismatch, ConfigError

KIND = "ood_bank"
DEFAULT_K = 10  # Sun et al.'s k for a bank of ~1% of ImageNet; the bank here is a few thousand sentences


def logit_scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: fn(logits) for name, fn in LOGIT_SCORES.items()}


class OODBank:
    """ID training features of a frozen encoder (normalised), scored against by kNN distance."""

    def __init__(self, features: torch.Tensor, *, k: int = DEFAULT_K, layer: int | None = None,
                 max_length: int = 128, model_fingerprint: dict | None = None):
        if features.dim() != 2 or len(features) == 0:
            raise ConfigError(f"an OOD bank needs (N >= 1, d) features, got shape {tuple(features.shape)}")
        self.features = nn.functional.normalize(features.float(), dim=-1)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(features):
            raise ConfigError(f"k must be an int in 1..{len(features)} (the bank's size), got {k!r}")
        self.k, self.layer, self.max_length = k, layer, max_length
        self.model_fingerprint = model_fingerprint

    @classmethod
    def build(cls, model: nn.Module, tokenizer, texts: Sequence[str], *, k: int = DEFAULT_K,
              layer: int | None = None, max_length: int = 128, batch_size: int = 64) -> OODBank:
        check_layer(model, layer)
        feats = sentence_embeddings(model, tokenizer, texts, layer=layer, max_length=max_length, batch_size=batch_size)
        return cls(feats, k=k, layer=layer, max_length=max_length, model_fingerprint=encoder_fingerprint(model))

    def _check_model(self, model: nn.Module) -> None:
        if self.model_fingerprint is None:
            return  # a bank made from raw features: the caller vouches for the model
        why = model_mismatch(self.model_fingerprint, model)
        if why:
            raise BaseModelMismatch(f"this OOD bank was built with another model: {why}")

    def score(self, model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
        """Higher = more in-distribution: −‖z − z_(k)‖ in the bank's feature space (same model and layer)."""
        self._check_model(model)
        feats = sentence_embeddings(model, tokenizer, texts, layer=self.layer, max_length=self.max_length,
                                    batch_size=batch_size)
        return self.score_features(feats)

    def score_features(self, features: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return knn_score(features, self.features, self.k if k is None else k)

    def save(self, folder, model: nn.Module):
        self._check_model(model)
        meta = {"k": self.k, "layer": self.layer, "max_length": self.max_length, "size": len(self.features)}
        return save_artefact(folder, KIND, {"features": self.features}, meta, model)

    @classmethod
    def load(cls, folder, model: nn.Module, force: bool = False) -> OODBank:
        tensors, meta = load_artefact(folder, KIND, model, force=force)
        if "features" not in tensors:
            raise ConfigError(f"{folder} holds no 'features' tensor: not an OOD bank")
        return cls(tensors["features"], k=meta.get("k", DEFAULT_K), layer=meta.get("layer"),
                   max_length=meta.get("max_length", 128), model_fingerprint=encoder_fingerprint(model))
