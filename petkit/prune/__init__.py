"""Pruning pre-trained models: one-shot magnitude pruning and its controls (essential sparsity)."""

from .masks import KINDS
from .prune import DEFAULT_TARGETS, PruneResult, prunable_modules, prune

__all__ = ["DEFAULT_TARGETS", "KINDS", "PruneResult", "prunable_modules", "prune"]
