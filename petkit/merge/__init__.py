"""Merging in ΔW space: task arithmetic, TIES, DARE and magnitude pruning of task vectors (`ops`), and
of adapters into a new LoRA adapter (`adapters`)."""

from petkit.merge.adapters import MergeReport, merge_adapters, weight_deltas
from petkit.merge.ops import METHODS, dare_drop, elect_sign, low_rank, magnitude_trim, merge_tensors

__all__ = ["METHODS", "MergeReport", "dare_drop", "elect_sign", "low_rank", "magnitude_trim", "merge_adapters",
           "merge_tensors", "weight_deltas"]
