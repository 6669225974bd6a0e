"""SaRA (Hu et al., ICLR 2025, arXiv 2409.06633): train only the smallest pre-trained weights.

Selection: in every targeted weight, the entries with |w| < `threshold` (default 2e-3, the official
value for Stable Diffusion) — the "temporarily ineffective" weights — or, with `ratio` in (0, 1),
the smallest `ratio` of each matrix's entries. They are a `SparseDelta`: ΔW = scatter(values) with
values starting at 0 (exactly the base model), and the memory-saving backward of
`petkit/kernels/sparse.py` (the paper's "unstructured backpropagation": gradients and optimizer
state exist for the selected entries alone, and no dense weight gradient is formed). Trainable: the number of selected entries.
Mergeable exactly (the update lives in W's own entries).

Low-rank constraint: the paper adds λ‖P‖_* for the selected weights P = W ⊙ M (the selected
entries of the current weight, zero elsewhere), one random 2-D weight with min(shape) >
`rank_min_dim` per step (λ = `rank_weight`). Its gradient λ·(U Vᵀ)[M] (SVD of P) belongs to the
optimizer step, not to a backward pass: added in backward it would count once per accumulated
micro-batch (k× too strong with k-step accumulation) and be divided by a GradScaler's loss scale
when the gradients are unscaled (vanishing next to the task gradient). So, as the official optimizer
does inside its step(), `nuclear_step(am)` adds it once per step to the gradient the update uses,
for one eligible layer picked uniformly at random (Python's `random`, as the official code; petkit's
trainer seeds it, restores it on resume, and it agrees across ranks). petkit's trainer runs it from
an optimizer step pre-hook, after accumulation, unscaling and clipping (the term is not clipped,
as in the official code). Your own loop: call ``am.hook_optimizer(optimizer)`` once after building
the optimizer; every ``optimizer.step()`` (or ``scaler.step(optimizer)``) then adds the term.

Progressive adjustment: `reselect(am)` (or `schedule(am, at=step)` as a trainer `on_step`
callback; the official run does it at step 2500 of 5005): entries that grew to |w| >= threshold
are frozen at their learned value and the rest keep training (M₂ = M₁ ∧ |W_t| < θ). The optimizer
keeps its tensors (the frozen entries get zero gradient and the forward ignores them), so
nothing needs rebuilding; the official optimizer also restarts its Adam state there.

Paper vs code (sjtuplayer/SaRA, optim/adamw.py): `official=True` reproduces two behaviours of the
released optimizer: it writes |w| instead of w into the selected entries at the start (a sign flip
of the negative ones, below θ in size), and its nuclear-norm term is backpropagated into the
original, no longer optimised weights, so it never changes the trained values (no effect).
The official code selects from every parameter (convolutions, norms, biases); petkit adapts linear
layers (default "all-linear"). Learning rate in the code, when none is given: 1e-3 · exp(−350 θ).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from petkit.core.config import AdapterConfig, check, is_number
from petkit.core.errors import ConfigError, StateError
from petkit.core.layer import in_out_features, weight_oi
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, MethodDefaults, register
from petkit.kernels.sparse import SparseDelta, support_at, with_support


@dataclass(frozen=True)
class SaraConfig(AdapterConfig):
    """targets default to "all-linear"; threshold: train entries with |w| < threshold; ratio: if
    in (0, 1), train the smallest `ratio` of each matrix instead (0 = use threshold);
    rank_weight: λ of the nuclear-norm term (0 = off); rank_min_dim: only matrices whose smaller
    side exceeds it get the term (64 in the official code); official: see the module docstring."""

    threshold: float = 2e-3
    ratio: float = 0.0
    rank_weight: float = 5e-4
    rank_min_dim: int = 64
    official: bool = False

    def validate(self):
        check(is_number(self.threshold) and 0 < self.threshold < math.inf,
              f"threshold must be a positive number, got {self.threshold!r}")
        check(is_number(self.ratio) and (self.ratio == 0 or 0 < self.ratio < 1),
              f"ratio must be a fraction in (0, 1), or 0 to select by threshold, got {self.ratio!r}")
        check(is_number(self.rank_weight) and 0 <= self.rank_weight < math.inf,
              f"rank_weight must be a number >= 0, got {self.rank_weight!r}")
        check(isinstance(self.rank_min_dim, int) and not isinstance(self.rank_min_dim, bool) and self.rank_min_dim >= 0,
              f"rank_min_dim must be an int >= 0, got {self.rank_min_dim!r}")
        check(isinstance(self.official, bool), f"official must be true or false, got {self.official!r}")


class SaraDelta(SparseDelta):
    def __init__(self, base, index, threshold: float, rank_weight: float, nuclear: bool):
        super().__init__(base, index)
        n = self.index.numel()
        self.register_buffer("active", torch.ones(n, dtype=torch.bool))  # False: frozen by reselect()
        self.register_buffer("frozen", torch.zeros(n))                   # their values from then on
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        # the base weight at the support, for the nuclear-norm term: read once, because the term runs
        # between steps, when a sharded (FSDP) base holds only its shard (not saved: the base has it)
        at_base = support_at(base, self.index).detach().clone() if nuclear else torch.zeros(0)
        self.register_buffer("at_base", at_base, persistent=False)
        self.rank_weight, self.nuclear = rank_weight, nuclear  # nuclear: this layer can get the term
        self.all_active = True

    def effective_values(self, base):
        v = self.values
        return v if self.all_active else torch.where(self.active, v, self.frozen)

    @torch.no_grad()
    def add_nuclear_grad(self) -> None:
        """values.grad += λ ∂‖P‖_*/∂values = λ (U Vᵀ)[M], P = W ⊙ M: the entries still training
        (frozen ones are not in P, so they get nothing)."""
        v = self.values
        P = with_support(None, torch.where(self.active, self.at_base.to(v.dtype) + v, 0.0), self.index, self.shape, 1.0)
        U, _, Vh = torch.linalg.svd(P, full_matrices=False)
        g = self.rank_weight * (U @ Vh).reshape(-1)[self.index] * self.active
        if v.grad is None:
            v.grad = g
        else:
            v.grad.add_(g.to(v.grad.dtype))

    @torch.no_grad()
    def reselect(self, base) -> int:
        current = support_at(base, self.index) + torch.where(self.active, self.values, self.frozen)
        still = self.active & (current.abs() < self.threshold)
        self.frozen.copy_(torch.where(self.active & ~still, self.values, self.frozen))
        self.active.copy_(still)
        self.all_active = bool(still.all())
        return int(still.sum())

    def loaded(self):
        super().loaded()
        self.all_active = bool(self.active.all())


def build_sara(base, config: SaraConfig, path: str, model, init: bool = True) -> SaraDelta:
    absw = weight_oi(base).detach().float().abs().reshape(-1)  # flat (out, in) order, also for Conv1D
    if config.ratio:
        k = round(config.ratio * absw.numel())
        index = torch.topk(absw, k, largest=False).indices
        threshold = torch.kthvalue(absw, k + 1).values.item() if k < absw.numel() else math.inf
    else:
        index = torch.nonzero(absw < config.threshold).squeeze(1)
        threshold = config.threshold
    # the official optimizer's term never reaches the trained values (module docstring): none here
    nuclear = bool(config.rank_weight) and not config.official and min(in_out_features(base)) > config.rank_min_dim
    delta = SaraDelta(base, index, threshold, config.rank_weight, nuclear)
    if init and config.official:  # the released optimizer writes |w| into the selected entries
        with torch.no_grad():
            w = support_at(base, delta.index).float()
            delta.values.copy_(w.abs() - w)
    return delta


def nuclear_step(am, name: str = "default") -> str | None:
    """Add the nuclear-norm term's gradient λ·(U Vᵀ)[M] to one eligible layer's values, picked
    uniformly at random; returns its path (None: no layer is eligible). Once per optimizer step, on
    the unscaled gradient, just before the update: `AdaptedModel.hook_optimizer` runs it so (SaRA's
    `Method.before_step`)."""
    eligible = [(p, d) for p, _, d in am.layers(name) if isinstance(d, SaraDelta) and d.nuclear]
    if not eligible:
        return None
    path, delta = random.choice(eligible)
    delta.add_nuclear_grad()
    return path


def reselect(am, name: str = "default") -> int:
    """Progressive adjustment: freeze the entries that grew to |w| >= threshold; returns how many
    entries still train."""
    if name in am.state.merged:
        raise StateError(f"adapter {name!r} is merged; unmerge() before reselect() (it reads the base weights)")
    if not isinstance(am.adapter_config(name), SaraConfig):
        raise ConfigError(f"adapter {name!r} is a {am.adapter_config(name).method} adapter; reselect() needs a SaRA one")
    return sum(d.reselect(layer.base_layer) for _, layer, d in am.layers(name) if isinstance(d, SaraDelta))


def schedule(am, at: int, name: str = "default"):
    """An `on_step` callback for `petkit.train` that calls reselect(am, name) after step `at`."""
    def on_step(info) -> None:
        if info.step == at:
            reselect(am, name)
    return on_step


register(Method(
    name="sara", config=SaraConfig, kind="weight", build=build_sara, layer_types=LINEAR_TYPES, mergeable=True,
    spec="Hu et al., ICLR 2025 (arXiv 2409.06633); code sjtuplayer/SaRA",
    summary="train the smallest |w| entries (sparse values), nuclear-norm term, progressive reselection",
    default_targets=("all-linear",), before_step=nuclear_step,
    # bench: |w| < 2e-3: 3.4% of MiniLM's linear weights
    bench=MethodDefaults({}, (5e-4, 2e-3), "sparse"),
))
