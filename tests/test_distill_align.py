"""GPT4Image-style alignment losses and projector."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from petkit.core.errors import ConfigError
from petkit.distill import Projector, text_alignment_loss


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_the_losses_match_their_formulas():
    """Catches a missing temperature, a one-sided CLIP loss, or BYOL's constant off."""
    z, t = unit(6, 8, seed=1), unit(6, 8, seed=2)
    logits = z @ t.T / 0.2
    target = torch.arange(6)
    clip = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert torch.allclose(text_alignment_loss(z, t, "clip", 0.2), clip)
    assert torch.allclose(text_alignment_loss(z, t, "ctr", 0.2), F.cross_entropy(logits, target))
    assert torch.allclose(text_alignment_loss(z, t, "byol"), (2 - 2 * (z * t).sum(-1)).mean())
    assert text_alignment_loss(t, t, "byol").abs() < 1e-6  # z = t: nothing to pull


def test_supcon_leaves_same_class_pairs_out_of_the_negatives():
    z, t = unit(4, 8, seed=3), unit(4, 8, seed=4)
    labels = torch.tensor([0, 0, 1, 1])
    loss = text_alignment_loss(z, t, "supcon", 0.2, labels=labels)
    logits = z @ t.T / 0.2
    logits[0, 1] = logits[1, 0] = logits[2, 3] = logits[3, 2] = float("-inf")
    target = torch.arange(4)
    assert torch.allclose(loss, (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2)
    one_class = text_alignment_loss(z, t, "supcon", 0.2, labels=torch.zeros(4, dtype=torch.long))
    assert one_class.abs() < 1e-6  # no negatives left
    with pytest.raises(ConfigError, match="needs the labels"):
        text_alignment_loss(z, t, "supcon")
    with pytest.raises(ConfigError, match="must be one of"):
        text_alignment_loss(z, t, "triplet")


def test_the_text_side_is_a_constant_and_the_projector_ends_on_the_sphere():
    projector = Projector(16, 8)
    features = torch.randn(5, 16, requires_grad=True)
    t = torch.randn(5, 8, requires_grad=True)
    z = projector(features)
    assert torch.allclose(z.norm(dim=-1), torch.ones(5), atol=1e-5)
    text_alignment_loss(z, t).backward()
    assert t.grad is None and features.grad is not None
    assert sum(p.numel() for p in Projector(16, 8, kind="linear").parameters()) == 16 * 8
