"""The wrapper that puts deltas on one module, and the Delta contract methods implement.

`AdaptedLayer` replaces a module in its parent, keeps the original as `base_layer` (frozen), and
holds one `Delta` per adapter in `deltas`. Its forward is the only place where output and weight
deltas are applied, merged ones skipped, and mixed-adapter batches routed.
"""

from __future__ import annotations

import torch
from torch import nn

from petkit.core.module_types import Conv1D, QuantizedLinear
from petkit.core.state import AdapterState

# Routed plans a layer keeps: a serving loop alternates between two routings, the newcomers' prefill
# and the running batch's decode step, and each would otherwise evict the other's plan.
KEPT_PLANS = 2


class Delta(nn.Module):
    """One adapter's change to one module.

    forward(base, x, y) -> y'      the unmerged output, given the base output y for input x.
    fused_forward(base, x)         optional: base + delta in one pass (used when it is the only live delta).
    merge(base) / unmerge(base)    fold into / out of the base weights in place (weight deltas).
    delta_weight(base)             ΔW in (out, in) layout, for merging tools; None if not a weight delta.
    saved_tensors() / loaded()     what the adapter file holds (default: the state dict), and the hook run
                                   after a load copied into those tensors (e.g. unpack low-bit codes).
    release()                      undo side effects of building (e.g. hooks on other modules) when removed.
    routed(base, x, y, rows)       a mixed batch: this delta on the samples `rows`, in place into y.
    routed_plan(base, x, groups)   optional (a static method): all groups [(delta, rows)] of a mixed batch
                                   at once, as (x -> y, the tensors it read); see AdaptedLayer._routed_plan.
    """

    mergeable = True
    fused = False

    def forward(self, base: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def fused_forward(self, base: nn.Module, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def routed(self, base: nn.Module, x: torch.Tensor, y: torch.Tensor, rows) -> None:
        """Apply this delta to the samples `rows` of a mixed batch, writing into y in place."""
        y[rows] = self(base, x[rows], y[rows])

    def merge(self, base: nn.Module) -> None:  # pragma: no cover
        raise NotImplementedError

    def unmerge(self, base: nn.Module) -> None:  # pragma: no cover
        raise NotImplementedError

    def delta_weight(self, base: nn.Module) -> torch.Tensor | None:
        return None

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        return self.state_dict(keep_vars=True)

    def loaded(self) -> None:
        pass

    def release(self) -> None:
        pass


class AdaptedLayer(nn.Module):
    def __init__(self, base_layer: nn.Module, path: str, state: AdapterState):
        super().__init__()
        self.base_layer = base_layer
        self.deltas = nn.ModuleDict()
        self.path = path
        object.__setattr__(self, "_state", state)  # shared, deliberately not a submodule
        self._kept_plans = {}  # key -> (tensors read, their versions, plan) of the last KEPT_PLANS routings

    def forward(self, x, *args, **kwargs):
        state = self._state
        if state.routes is not None:
            return self._forward_routed(x, args, kwargs)
        if state.composition is not None and not state.disabled:
            return self._forward_composed(state.composition, x, args, kwargs)
        live = state.live(self.deltas)
        if not live:
            return self.base_layer(x, *args, **kwargs)
        if len(live) == 1 and self.deltas[live[0]].fused and not args and not kwargs and not self._hooked() \
                and not isinstance(self.base_layer, QuantizedLinear):  # a fused pass would keep the float weight
            return self.deltas[live[0]].fused_forward(self.base_layer, x)
        y = self.base_layer(x, *args, **kwargs)
        for name in live:
            y = self.deltas[name](self.base_layer, x, y)
        return y

    def _forward_composed(self, composition, x, args, kwargs):
        present = {n for n in composition.leaves() if n in self.deltas and n not in self._state.merged}
        y = self.base_layer(x, *args, **kwargs)
        if not present:
            return y
        return composition.apply(lambda name, y_in: self.deltas[name](self.base_layer, x, y_in) if name in present
                                 else y_in, y)

    def _forward_routed(self, x, args, kwargs):
        if not args and not kwargs and not self._hooked():
            plan = self._routed_plan(x)
            if plan is not None:
                return plan(x)
        groups = self._groups()
        y = self.base_layer(x, *args, **kwargs)
        if not groups:
            return y
        y = y.clone() if y.requires_grad else y  # in-place writes must not clobber a saved tensor
        if torch.is_grad_enabled():
            # A delta that reads y[rows] (a bottleneck on the output, a gate) saves it for backward; a slice
            # is a view of y, which the next group's write would change under it. Index rows gather a copy.
            groups = [(n, _indices(rows, y.device)) for n, rows in groups]
        for name, rows in groups:
            self.deltas[name].routed(self.base_layer, x, y, rows)
        return y

    def _groups(self):
        return [(n, rows) for n, rows in self._state.routes.items() if n is not None and n in self.deltas]

    def _routed_plan(self, x):
        """The routing's computation on this layer as one function of x: the base layer when no routed
        adapter is here, else what the first group's delta type offers (`routed_plan`: LoRA's batched
        form), or None. Without autograd the plan is kept for the next forwards of the same routing
        (decoding runs one per token), until anything it read changes: the routing, the deltas here,
        x's dtype or device, train/eval, the version counter of any tensor it read (in-place updates:
        optimizer steps, loads, `p.add_()` under no_grad), or a `.to()` / load_state_dict reaching this
        layer (which may swap tensors without bumping their version). Writes through `.data` are not
        seen. A kept plan holds what it built (LoRA: copies of the routed adapters' factors) until
        KEPT_PLANS newer routings have replaced it."""
        key = (self._state.route_names, tuple(self.deltas.values()), x.dtype, x.device, self.training)
        kept = self._kept_plans.get(key)
        if kept is not None and _versions(kept[0]) == kept[1] and not torch.is_grad_enabled():
            self._kept_plans[key] = self._kept_plans.pop(key)  # now the most recently used
            return kept[2]
        groups = self._groups()
        if not groups:
            plan, read = self.base_layer, []
        else:
            # A delta type may handle all of its groups in one batched computation (LoRA does).
            make = getattr(self.deltas[groups[0][0]], "routed_plan", None)
            made = make and make(self.base_layer, x, [(self.deltas[n], rows) for n, rows in groups])
            if not made:
                return None
            plan, read = made
        versions = _versions(read)
        if not torch.is_grad_enabled() and versions is not None:
            self._kept_plans.pop(key, None)
            self._kept_plans[key] = (read, versions, plan)
            while len(self._kept_plans) > KEPT_PLANS:
                del self._kept_plans[next(iter(self._kept_plans))]  # the oldest
        return plan

    def _apply(self, fn, *args, **kwargs):
        self._kept_plans = {}  # .to() may swap the tensors a kept plan read without bumping their versions
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._kept_plans = {}  # so may load_state_dict(assign=True)
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        # A copy (deepcopy, adapt(copy=True)) must not keep a plan that reads the original's tensors.
        return {**super().__getstate__(), "_kept_plans": {}}

    def _hooked(self) -> bool:
        """Whether another method hooks base_layer (e.g. a parallel adapter reading its input): the fused
        and batched paths never call base_layer, so they must not run then."""
        base = self.base_layer
        return bool(base._forward_pre_hooks or base._forward_hooks)

    # Model code sometimes reads a layer's weight directly (T5 checks `self.wo.weight.dtype`); expose
    # the base layer's tensors explicitly rather than forwarding every attribute.
    @property
    def weight(self):
        return self.base_layer.weight

    @property
    def bias(self):
        return getattr(self.base_layer, "bias", None)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, adapters={list(self.deltas)}"


def _versions(tensors) -> list[int] | None:
    try:
        return [t._version for t in tensors]
    except RuntimeError:  # inference tensors keep no version counter: nothing can be kept
        return None


def _indices(rows, device) -> torch.Tensor:
    return torch.arange(rows.start, rows.stop, device=device) if isinstance(rows, slice) else rows


# -- base layer geometry: every weight seen as (out, in) -------------------------------------------

def weight_oi(base: nn.Module) -> torch.Tensor:
    """The base weight as an (out_features, in_features) matrix view (no copy)."""
    w = base.weight
    if isinstance(base, (nn.Linear, QuantizedLinear)):  # a low-bit layer's weight is a dequantised copy
        return w
    if Conv1D and isinstance(base, Conv1D):  # stored (in, out)
        return w.t()
    if isinstance(base, nn.Embedding):  # (num_embeddings, dim): rows are looked up, so "in" = num_embeddings
        return w.t()
    if isinstance(base, nn.Conv2d):
        return w.flatten(1)
    raise TypeError(f"no (out, in) view for {type(base).__name__}")


def add_to_weight(base: nn.Module, delta_oi: torch.Tensor, sign: float = 1.0) -> None:
    """base.weight += sign * ΔW, with ΔW given in (out, in) layout."""
    with torch.no_grad():
        weight_oi(base).add_(delta_oi.to(base.weight.dtype), alpha=sign)


def linear_nd(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight_t + bias for an N-D x, as the output of a custom autograd Function's forward:
    matmul hands back a tensor of its own, where a 2-D product reshaped (or F.linear's N-D result) is
    a view, which autograd then refuses to let model code change in place (Falcon adds into its
    MLP output: mlp_output += attention_output). The bias goes in as a second pass, as addmm's does
    (it copies the bias into the output before the GEMM)."""
    y = torch.matmul(x, weight_t)
    return y if bias is None else y.add_(bias)


def in_out_features(base: nn.Module) -> tuple[int, int]:
    w = weight_oi(base)
    return w.shape[1], w.shape[0]
