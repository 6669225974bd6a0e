"""Training a classifier with GPT4Image's text-alignment loss (resnet/utils.py `WrapperModel`): any
feature extractor f, a classifier head, a `Projector` g and one frozen description embedding per
training example.

    t_i = normalize(mean-pool(E_text(d_i)))        computed once, without gradients (`embed_texts`)
    logits = head(f(x)),   z = normalize(g(f(x)))
    loss = CE(logits, y) + λ · L_text(z, t; τ)      (L_text: `petkit.distill.align`)

`AlignedClassifier` is a model like any other for `petkit.train.train` / `evaluate`: called as
``model(inputs=x, labels=y, text_embeddings=t)`` it returns ``.loss`` and ``.logits``; without
``text_embeddings`` (evaluation, or λ = 0) the loss is the cross-entropy alone and the projector does
not run. `inference_model()` is what ships: f + head, the projector dropped, so inference costs what
the baseline costs. `AlignedExamples` pairs inputs, labels and description embeddings row by row and
refuses counts that do not line up.

Where this differs from the released code:
- Text tower: GPT4Image embeds with CLIP's text encoder (its end-of-text token). Here any Hugging
  Face encoder, mean-pooled over the attention mask and L2-normalised (MiniLM's sentence-embedding
  recipe; the spec's CPU check uses MiniLM).
- The released code commented out the assert that the description rows match the image dataset, so
  a misordered file trains silently on the wrong descriptions. Here a count mismatch is an error; no
  flag restores the unchecked behaviour, which can only be wrong.
- The released code all-gathers Z and T across GPUs (gradients on the local slice only); this runs in
  one process, so the negatives are the local batch. Mixup/cutmix and repeated augmentation are not
  reproduced.
- A one-example batch trains on the cross-entropy alone: the projector's BatchNorm needs two rows
  and the contrastive losses need a negative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from petkit.core.errors import ConfigError
from petkit.models.pooling import embed_sentences

from .align import LOSSES, Projector, text_alignment_loss

PROJECTORS = ("mlp", "linear")


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class AlignConfig:
    """``loss``: one of LOSSES; ``weight``: λ (0 = plain cross-entropy); ``temperature``: τ of the
    contrastive losses; ``projector``: ``mlp`` (Linear → BN → ReLU → Linear) or ``linear``."""

    loss: str = "clip"
    weight: float = 0.3
    temperature: float = 0.2
    projector: str = "mlp"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"alignment loss must be one of {LOSSES}, got {self.loss!r}")
        if self.projector not in PROJECTORS:
            raise ConfigError(f"projector must be one of {PROJECTORS}, got {self.projector!r}")
        if not _finite_number(self.weight) or self.weight < 0:
            raise ConfigError(f"weight (λ) must be a finite number >= 0, got {self.weight!r}")
        if not _finite_number(self.temperature) or self.temperature <= 0:
            raise ConfigError(f"temperature (τ) must be a finite number > 0, got {self.temperature!r}")


@dataclass
class AlignedOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    text_loss: torch.Tensor | None = None  # None when the alignment term did not run


class AlignedClassifier(nn.Module):
    """``features``: inputs → (batch, feature_width); ``head``: features → logits. Both are the user's
    modules, trained in place; the projector (feature_width → text_width) is created here."""

    def __init__(self, features: nn.Module, head: nn.Module, feature_width: int, text_width: int,
                 config: AlignConfig | None = None):
        super().__init__()
        self.features, self.head, self.config = features, head, config or AlignConfig()
        self.text_width = text_width
        self.projector = Projector(feature_width, text_width, kind=self.config.projector)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None,
                text_embeddings: torch.Tensor | None = None) -> AlignedOutput:
        if text_embeddings is not None:
            self._check_rows(text_embeddings, len(inputs))
        features = self.features(inputs)
        logits = self.head(features)
        if labels is None:
            return AlignedOutput(logits)
        ce = F.cross_entropy(logits, labels)
        if text_embeddings is None or self.config.weight == 0 or len(inputs) < 2:
            return AlignedOutput(logits, ce, ce)
        z = self.projector(features)
        text = text_alignment_loss(z, text_embeddings, self.config.loss, self.config.temperature, labels=labels)
        return AlignedOutput(logits, ce + self.config.weight * text, ce, text)

    def inference_model(self) -> nn.Sequential:
        """The deployed graph: features + head (the same modules, shared, not copied)."""
        return nn.Sequential(self.features, self.head)

    def _check_rows(self, text: torch.Tensor, n: int) -> None:
        if text.dim() != 2 or text.shape != (n, self.text_width):
            raise ConfigError(f"text_embeddings must be one {self.text_width}-wide row per example, shape "
                              f"({n}, {self.text_width}); got {tuple(text.shape)}. Row i must embed example i's "
                              f"description")


class AlignedExamples(Dataset):
    """Example i = {inputs[i], labels[i], text_embeddings[i]} (no text for evaluation sets). Checks that
    the three line up one row per example and that every embedding is finite and non-zero."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, text_embeddings: torch.Tensor | None = None):
        if len(inputs) != len(labels):
            raise ConfigError(f"{len(inputs)} inputs but {len(labels)} labels: give one label per example")
        if text_embeddings is not None:
            if text_embeddings.dim() != 2 or len(text_embeddings) != len(inputs):
                raise ConfigError(f"{len(inputs)} examples but text embeddings of shape {tuple(text_embeddings.shape)}: "
                                  f"give one description embedding per example, in the examples' order")
            bad = (~torch.isfinite(text_embeddings).all(-1)) | (text_embeddings.norm(dim=-1) == 0)
            if bad.any():
                raise ConfigError(f"text embedding rows {bad.nonzero().flatten()[:5].tolist()} are NaN/inf or all "
                                  f"zero: re-embed those descriptions")
            text_embeddings = text_embeddings.detach()
        self.inputs, self.labels, self.text = inputs, labels, text_embeddings

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict:
        item = {"inputs": self.inputs[i], "labels": self.labels[i]}
        if self.text is not None:
            item["text_embeddings"] = self.text[i]
        return item


def embed_texts(model_or_dir: nn.Module | str | Path, tokenizer, texts: Sequence[str], *, batch_size: int = 64,
                max_length: int = 128) -> torch.Tensor:
    """One unit-norm row per text: the encoder's last hidden states averaged over real (non-pad) tokens.

    ``model_or_dir``: a loaded encoder (then ``tokenizer`` is required) or a model folder/alias, loaded
    here (``tokenizer=None`` loads its own). The encoder is frozen: no gradients, its train/eval mode
    restored. Texts must be non-empty strings (a NaN from a table or "" is refused by index).
    """
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if bad:
        raise ConfigError(f"descriptions {bad[:5]} are empty or not strings (e.g. {texts[bad[0]]!r}); every "
                          f"example needs a description")
    if not len(texts):
        raise ConfigError("no descriptions to embed")
    if isinstance(model_or_dir, (str, Path)):
        from petkit.models import load_model, load_tokenizer

        tokenizer = tokenizer or load_tokenizer(model_or_dir)
        model_or_dir = load_model(model_or_dir, task="base")
    elif tokenizer is None:
        raise ConfigError("embed_texts with a loaded model needs its tokenizer")
    return embed_sentences(model_or_dir, tokenizer, texts, batch_size=batch_size, max_length=max_length)
