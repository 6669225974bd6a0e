"""Merging in ΔW space: task arithmetic, TIES, DARE and magnitude pruning of task vectors (`ops`), of
adapters into a new LoRA adapter (`adapters`), and model soups of full models or adapters (`soup`)."""

from petkit.merge.adapters import (
    MergeReport, add_delta_adapter, check_same_base, merge_adapters, merge_deltas, weight_deltas,
)
from petkit.merge.ops import METHODS, dare_drop, elect_sign, low_rank, magnitude_trim, merge_tensors
from petkit.merge.soup import SoupResult, adapter_soup, greedy_soup, uniform_soup

__all__ = ["METHODS", "MergeReport", "SoupResult", "add_delta_adapter", "adapter_soup", "check_same_base", "merge_deltas", "dare_drop", "elect_sign", "greedy_soup", "low_rank",
           "magnitude_trim", "merge_adapters", "merge_tensors", "uniform_soup", "weight_deltas"]
