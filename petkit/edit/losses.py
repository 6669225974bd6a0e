"""Scores of a causal LM on completions and unrelated prompts: the target's NLL (MEND's edit loss),
whether every target token is the argmax (edit success), and the KL and argmax agreement between the
model before and after an edit on unrelated text (locality)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Position t predicts token t+1: (logits, labels, mask of target positions)."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    return logits, labels, labels != -100


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean −log p(target token) over every target token of the batch."""
    logits, labels, mask = _shifted(logits, labels)
    return F.cross_entropy(logits[mask], labels[mask])


def target_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (every target token is the argmax, mean probability of the target tokens)."""
    logits, labels, mask = _shifted(logits, labels)
    probs = torch.softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    hit = (logits.argmax(-1) == labels) | ~mask
    return hit.all(-1), (probs * mask).sum(-1) / mask.sum(-1)


def locality_kl(base_logits: torch.Tensor, edited_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p_base ‖ p_edited) per token, averaged over the tokens where mask is true (kl_loc_loss)."""
    base = torch.log_softmax(base_logits, -1)
    kl = (base.exp() * (base - torch.log_softmax(edited_logits, -1))).sum(-1)
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum()


def argmax_kept(base_logits: torch.Tensor, edited_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of unmasked positions whose top prediction the edit left unchanged."""
    same = (base_logits.argmax(-1) == edited_logits.argmax(-1))[mask.bool()]
    return same.float().mean()
