"""Ensembles of adapters over one base model, in one batched forward.

The batch is repeated once per member and each copy is routed to its adapter (mixed-adapter
batches), so the frozen base computation is shared; the members' class logits z_k (batch × classes)
are then fused:

- `mean_logits`: softmax(mean_k z_k);   `mean_probs`: mean_k softmax(z_k);
- `max_softmax`: per sample, the member with the highest max-softmax probability (the most confident);
- `energy`: per sample, the member with the lowest free energy E_k = −logsumexp(z_k) (energy-based
  OOD scoring: lower energy, more in-distribution);
- `dempster_shafer`: evidential fusion as in trusted multi-view classification (Han et al., ICLR
  2021), used by the seed MEFN paper: evidence e_k = softplus(z_k), Dirichlet α_k = e_k + 1, belief
  b_k = e_k / S_k and uncertainty u_k = C / S_k (S_k = Σ α_k, C classes); members combined pairwise
  by the reduced Dempster rule b = (b¹b² + b¹u² + b²u¹) / (1 − κ), u = u¹u² / (1 − κ), with conflict
  κ = Σ_{i≠j} b¹_i b²_j; the fused class probabilities are the Dirichlet mean b + u / C.

Returns class probabilities (batch × classes), and for dempster_shafer also the fused uncertainty.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from petkit.core.composition import repeat_batch
from petkit.core.errors import ConfigError

RULES = ("mean_logits", "mean_probs", "max_softmax", "energy", "dempster_shafer")


def member_logits(am, names: Sequence[str], batch: dict) -> torch.Tensor:
    """(members × batch × classes) logits of each adapter on batch, from one routed forward."""
    names = list(names)
    if len(names) < 2:
        raise ConfigError(f"an ensemble needs at least two members, got {names}")
    am.state.check_names(names)
    _, repeated, size = repeat_batch((), {k: v for k, v in batch.items() if k != "labels"}, len(names), "an ensemble")
    routes = [n for n in names for _ in range(size)]
    with torch.no_grad():
        logits = am(**repeated, adapter_names=routes).logits
    if logits.dim() != 2:
        raise ConfigError("ensembles fuse class logits (batch × classes); this model returns token-level logits")
    return logits.view(len(names), size, -1)


def fuse(logits: torch.Tensor, rule: str = "mean_probs") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(probabilities, uncertainty or None) from members × batch × classes logits."""
    if rule not in RULES:
        raise ConfigError(f"ensemble rule must be one of {', '.join(RULES)}, got {rule!r}")
    probs = logits.softmax(-1)
    rows = torch.arange(logits.shape[1])
    if rule == "mean_logits":
        return logits.mean(0).softmax(-1), None
    if rule == "mean_probs":
        return probs.mean(0), None
    if rule == "max_softmax":
        return probs[probs.amax(-1).argmax(0), rows], None
    if rule == "energy":
        return probs[(-torch.logsumexp(logits, -1)).argmin(0), rows], None
    return dempster_shafer(logits)


def opinion(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subjective-logic opinion of one member: (belief masses, uncertainty) from softplus evidence."""
    evidence = torch.nn.functional.softplus(logits)
    strength = (evidence + 1).sum(-1, keepdim=True)
    return evidence / strength, logits.shape[-1] / strength


def combine(b1, u1, b2, u2) -> tuple[torch.Tensor, torch.Tensor]:
    """The reduced Dempster rule for two opinions over the same classes."""
    conflict = b1.sum(-1, keepdim=True) * b2.sum(-1, keepdim=True) - (b1 * b2).sum(-1, keepdim=True)
    scale = 1.0 / (1.0 - conflict)
    return scale * (b1 * b2 + b1 * u2 + b2 * u1), scale * u1 * u2


def dempster_shafer(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    belief, uncertainty = opinion(logits[0])
    for member in logits[1:]:
        belief, uncertainty = combine(belief, uncertainty, *opinion(member))
    return belief + uncertainty / logits.shape[-1], uncertainty.squeeze(-1)


def ensemble(am, names: Sequence[str], batch: dict, rule: str = "mean_probs"):
    """Fused class probabilities of the adapters `names` on batch (and the uncertainty for
    dempster_shafer, else None)."""
    return fuse(member_logits(am, names, batch), rule)
