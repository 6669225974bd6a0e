"""APET (Su et al., EMNLP 2023, arXiv 2306.02320): a fixed budget of trainable parameters at random places.

A probe more than an engineered method: does *where* a parameter budget goes matter? The budget is
either a count (`budget`) or the trainable count of a reference method on the same model
(`reference`, a method config as a dict, e.g. {"method": "lora", "r": 8, "targets": ["attn.q",
"attn.v"]}, the default, where a model that fuses q, k and v counts its fused layer: its delta
parameters, without a task head). Placement is seeded and
deterministic.

- level="element" (default; the paper's framing, ΔW = M ⊙ Θ): exactly `budget` entries, drawn
  uniformly at random without replacement from all entries of the targeted weight matrices
  (default "all-linear"). Each layer's share is a multivariate hypergeometric draw, then its
  positions are a uniform subset; each layer is a `SparseDelta` (values start at 0, the sparse
  backward of `petkit/kernels/sparse.py`). Trainable: exactly the budget.
- level="tensor" (the official code, yushengsu-thu/PET_Scaling): whole weight and bias tensors of
  the targeted layers, visited in a seeded random order and taken whenever they fit in what is
  left of the budget (greedy, as the code). Rule: count <= budget, and every tensor left out is
  larger than budget − count (so the count is within one tensor of the budget). Each chosen
  tensor trains as a dense zero-initialised delta (same gradients as training it in place).
Both start exactly at the base model and merge exactly.

Paper vs code: the official code splits the budget 50/50 between backbone tensors and whole
instantiated PET modules (LoRA/adapter/prompt groups) and picks backbone tensors from every
parameter (embeddings, norms too); petkit spends the whole budget on the targeted linear layers'
tensors. The official BLOOM LoRA path reuses the q LoRA for v; the reference count here builds
the reference method itself, so it has no such bug.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.config import AdapterConfig, check
from petkit.core.layer import Delta, add_to_weight, in_out_features, weight_oi
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, MethodDefaults, config_from_dict, method_for, register
from petkit.core.roles import as_on_model
from petkit.core.targeting import method_targets, resolve_targets
from petkit.core.unwrapped import named_base_modules
from petkit.kernels.sparse import SparseDelta

LEVELS = ("element", "tensor")
DEFAULT_REFERENCE = {"method": "lora", "r": 8, "targets": ["attn.q", "attn.v"]}  # when neither is given (_default_reference)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ApetConfig(AdapterConfig):
    """targets default to "all-linear" (where the budget may go); level: "element" or "tensor";
    budget: trainable parameters (a count), or reference: a method config dict whose count to
    match (at most one of the two; neither = LoRA r=8 on attn.q, attn.v, the fused qkv where the model
    fuses them); seed: placement seed."""

    level: str = "element"
    budget: int = 0
    reference: dict = field(default_factory=dict)
    seed: int = 0

    def validate(self):
        check(self.level in LEVELS, f"level must be 'element' or 'tensor', got {self.level!r}")
        check(_is_int(self.budget) and self.budget >= 0, f"budget must be an int >= 0 (0 when reference is given), got {self.budget!r}")
        check(isinstance(self.reference, dict), f"reference must be a method config dict, got {type(self.reference).__name__}")
        check(not (self.budget and self.reference),
              "give either budget (a parameter count) or reference (a method config dict), not both")
        check(_is_int(self.seed) and self.seed >= 0, f"seed must be an int >= 0, got {self.seed!r}")
        if self.reference:
            ref = config_from_dict(self.reference)  # a ConfigError names what is wrong with it
            kind = method_for(ref).kind
            check(ref.method != "apet" and kind in ("weight", "output"),
                  f"reference must be a weight or output method (e.g. lora, ia3), got {ref.method!r}")


def reference_count(model: nn.Module, reference: dict) -> int:
    """Trainable parameters the reference method would add to `model` (its deltas, no task head)."""
    cfg = config_from_dict(reference)
    method = method_for(cfg)
    paths = method_targets(model, cfg, method)
    modules = dict(named_base_modules(model))
    return sum(p.numel() for path in paths for p in method.build(modules[path], cfg, path, model, init=False).parameters())


def _default_reference(model: nn.Module) -> dict:
    """LoRA r=8 on q and v as this model has them (the engine's rule for default targets)."""
    return {**DEFAULT_REFERENCE, "targets": list(as_on_model(model, DEFAULT_REFERENCE["targets"]))}


def sample_positions(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """k distinct positions in range(n), uniformly at random, without an n-sized permutation when k << n."""
    if 4 * k > n:
        return torch.randperm(n, generator=generator)[:k]
    picked = torch.empty(0, dtype=torch.int64)
    while picked.numel() < k:  # the distinct values of uniform draws are a uniform subset
        picked = torch.unique(torch.cat([picked, torch.randint(n, (2 * (k - picked.numel()),), generator=generator)]))
    return picked[torch.randperm(picked.numel(), generator=generator)[:k]]


def greedy_tensors(sizes: list[int], budget: int, seed: int) -> list[int]:
    """Indices of the tensors taken: seeded random order, each taken if it fits in what is left."""
    left, chosen = budget, []
    for i in torch.randperm(len(sizes), generator=torch.Generator().manual_seed(seed)).tolist():
        if sizes[i] <= left:
            chosen.append(i)
            left -= sizes[i]
    return sorted(chosen)


class TensorDelta(Delta):
    """Whole weight and/or bias of one linear layer as dense, zero-initialised deltas."""

    def __init__(self, base: nn.Module, weight: bool, bias: bool):
        super().__init__()
        in_f, out_f = in_out_features(base)
        self.weight = nn.Parameter(torch.zeros(out_f, in_f)) if weight else None
        self.bias = nn.Parameter(torch.zeros(out_f)) if bias else None
        self.fused = weight

    def fused_forward(self, base, x):
        bias = base.bias if self.bias is None else base.bias + self.bias
        return F.linear(x, weight_oi(base) + self.weight, bias)

    def forward(self, base, x, y):
        if self.weight is not None:
            y = y + F.linear(x, self.weight)
        return y if self.bias is None else y + self.bias

    def delta_weight(self, base):
        return None if self.weight is None else self.weight

    @torch.no_grad()
    def merge(self, base, sign: float = 1.0):
        if self.weight is not None:
            add_to_weight(base, self.weight, sign)
        if self.bias is not None:
            base.bias.add_(self.bias, alpha=sign)

    def unmerge(self, base):
        self.merge(base, -1.0)


def build_apet(base, config: ApetConfig, path: str, model, init: bool = True) -> Delta:
    paths = resolve_targets(model, config.targets or ("all-linear",), config.exclude, LINEAR_TYPES)
    modules = dict(named_base_modules(model))
    budget = config.budget or reference_count(model, config.reference or _default_reference(model))
    if config.level == "element":
        sizes = [math.prod(in_out_features(modules[p])) for p in paths]
    else:
        tensors = [(p, n, t.numel()) for p in paths for n in ("weight", "bias")
                   if isinstance(t := getattr(modules[p], n, None), torch.Tensor)]
        sizes = [s for _, _, s in tensors]
    if budget > sum(sizes):
        raise ValueError(f"the budget of {budget} parameters is larger than the {sum(sizes)} the {len(paths)} "
                         f"targeted layers hold; target more layers or lower the budget")
    i = paths.index(path)
    if config.level == "element":
        counts = np.random.default_rng(config.seed).multivariate_hypergeometric(np.array(sizes, dtype=np.int64), budget)
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + i)
        return SparseDelta(base, sample_positions(sizes[i], int(counts[i]), generator))
    chosen = {tensors[j][:2] for j in greedy_tensors(sizes, budget, config.seed)}
    return TensorDelta(base, (path, "weight") in chosen, (path, "bias") in chosen)


register(Method(
    name="apet", config=ApetConfig, kind="weight", build=build_apet, layer_types=LINEAR_TYPES, mergeable=True,
    spec="Su et al., EMNLP 2023 (arXiv 2306.02320); code yushengsu-thu/PET_Scaling",
    summary="a parameter budget (a count or a reference method's) at random elements or whole tensors",
    default_targets=("all-linear",),
    # bench: LoRA r=8 on q, v's budget at random elements
    bench=MethodDefaults({}, (1e-3, 5e-3), "sparse"),
))
