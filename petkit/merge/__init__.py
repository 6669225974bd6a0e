"""Merging in ΔW space: task arithmetic, TIES, DARE and magnitude pruning of task vectors (`ops`), of
adapters into a new LoRA adapter (`adapters`), and model soups of full models or adapters (`soup`)."""

from petkit.merge.adapters import MergeReport, merge_adapters, weight_deltas
from petkit.merge.ops import METHODS, dare_drop, elect_sign, low_rank, magnitude_trim, merge_tensors
from petkit.merge.soup import SoupResult, adapter_soup, greedy_soup, uniform_soup

__all__ = ["METHODS", "MergeReport", "SoupResult", "adapter_soup", "dare_drop", "elect_sign", "greedy_soup", "low_rank",
           "magnitude_trim", "merge_adapters", "merge_tensors", "uniform_soup", "weight_deltas"]
