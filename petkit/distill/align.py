"""GPT4Image-style alignment: an auxiliary loss that pulls a model's features toward a frozen text
encoder's embedding of a description of each training example (GPT4Image/description2embedding.py,
resnet/utils.py). The descriptions are embedded once, offline; training adds a small projector g and the
loss below; at inference only the model and its classifier run (g is thrown away).

    z = normalize(g(f(x))),  t = normalize(text embedding of x's description)
    L = CE(head(f(x)), y) + λ · L_text                                    (λ = 0.3)
    L_text "clip":   ½ [CE(Z Tᵀ/τ, i) + CE(T Zᵀ/τ, i)]   over the batch   (τ = 0.2)
           "ctr":    CE(Z Tᵀ/τ, i)                         image → text only
           "byol":   mean_i (2 − 2⟨z_i, t_i⟩)
           "supcon": "clip" with the other examples of the same class taken out of the negatives (with
                     few classes a batch holds many same-class pairs, which "clip" pushes apart; the
                     spec's suggested variant, not in the released code)
Projector (`Projector`): Linear(d → 2D, no bias) → BatchNorm1d → ReLU → Linear(2D → D), trunc-normal
std D^-½ on both (the ResNet variant); `kind="linear"` is a single bias-free Linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.errors import ConfigError

LOSSES = ("clip", "ctr", "byol", "supcon")


class Projector(nn.Module):
    def __init__(self, width: int, text_width: int, kind: str = "mlp"):
        super().__init__()
        if kind not in ("mlp", "linear"):
            raise ConfigError(f"projector kind must be 'mlp' or 'linear', got {kind!r}")
        if kind == "linear":
            self.net = nn.Linear(width, text_width, bias=False)
        else:
            self.net = nn.Sequential(nn.Linear(width, 2 * text_width, bias=False), nn.BatchNorm1d(2 * text_width),
                                     nn.ReLU(), nn.Linear(2 * text_width, text_width))
        for m in self.net.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=text_width ** -0.5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=-1)


def text_alignment_loss(z: torch.Tensor, t: torch.Tensor, kind: str = "clip", temperature: float = 0.2,
                        labels: torch.Tensor | None = None) -> torch.Tensor:
    """L_text for unit-norm image-side features z and text embeddings t (rows paired by example)."""
    if kind not in LOSSES:
        raise ConfigError(f"alignment loss must be one of {LOSSES}, got {kind!r}")
    t = F.normalize(t.detach(), dim=-1)  # constants: the text encoder is frozen
    if kind == "byol":
        return (2 - 2 * (z * t).sum(-1)).mean()
    logits = z @ t.T / temperature
    target = torch.arange(len(z), device=z.device)
    if kind == "supcon":
        if labels is None:
            raise ConfigError("the supcon alignment loss needs the labels, to leave same-class pairs out of the negatives")
        same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(z), dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(same, float("-inf"))
    if kind == "ctr":
        return F.cross_entropy(logits, target)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
