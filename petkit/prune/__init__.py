"""Pruning pre-trained models: one-shot magnitude pruning and its controls (essential sparsity)."""

from .masks import KINDS
from .prune import DEFAULT_TARGETS, PruneResult, prunable_modules, prune
from .storage import load_pruned, save_pruned
from .sweep import SweepConfig, run_sweep

__all__ = ["DEFAULT_TARGETS", "KINDS", "PruneResult", "SweepConfig", "load_pruned", "prunable_modules", "prune",
           "run_sweep", "save_pruned"]
