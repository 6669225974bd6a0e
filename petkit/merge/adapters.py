"""Merging adapters of one AdaptedModel in ΔW space, into a new LoRA adapter.

Each input adapter contributes, per module it adapts, its exact weight change ΔW_i (LoRA s·BA, DoRA's
merged-minus-base, SVFit, MiSS, DSEE, IA³ …: whatever `Delta.delta_weight` gives); a module an
adapter leaves alone contributes 0. The chosen merge (see `ops`) runs on those ΔW, module by
module, and the result is written as a LoRA adapter with scale 1:

- `rank=R`: the best rank-R factorisation of each merged ΔW (SVD), with its relative error
  ‖ΔW − BA‖_F / ‖ΔW‖_F reported per module (0 when R ≥ rank(ΔW));
- `rank="concat"` (linear merges of plain LoRA adapters only): A = [w_i s_i A_i], B = [B_i], exactly
  Σ w_i s_i B_i A_i at rank Σ r_i.

Never averaging the factors themselves: (Σ B_i)(Σ A_i) ≠ Σ B_i A_i (what PEFT's
`add_weighted_adapter` does for linear/ties/dare). Task heads are not merged (each input's head
belongs to its task) unless `heads="average"` (adapters of one task, as in a soup).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from petkit.core.errors import ConfigError
from petkit.core.head import HeadDelta
from petkit.core.unwrapped import named_base_modules
from petkit.merge.ops import check_merge_args, low_rank, merge_tensors
from petkit.methods.lora import LoraConfig, LoraDelta

HEADS = ("none", "average")  # what happens to the inputs' task heads


@dataclass
class MergeReport:
    """What merge_adapters did: the new adapter, its rank per module and the re-factorisation error."""

    name: str
    method: str
    ranks: dict[str, int] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def weight_deltas(am, name: str) -> dict[str, torch.Tensor]:
    """{module path: ΔW (out × in)} of one adapter; a clear error for adapters with no weight delta."""
    am.state.check_names([name])
    method = am.method_of(name).name
    if name in am.model_deltas or am.is_selection(name):
        raise ConfigError(f"{method} adapter {name!r} has no per-module weight change to merge (it acts on the whole "
                          "model or trains base weights in place); merge weight-delta adapters such as LoRA")
    deltas = {}
    for path, layer, delta in am.layers(name):
        if isinstance(delta, HeadDelta):
            continue
        dw = delta.delta_weight(layer.base_layer)
        if dw is None:
            raise ConfigError(f"{method} adapter {name!r} changes {path} in a way that is not a weight delta (an added "
                              "module or a non-linear path); it cannot be merged in ΔW space")
        deltas[path] = dw.detach()
    return deltas


def merge_adapters(am, names, method: str = "linear", weights=None, density: float | None = None, *,
                   rank: int | str = 8, into: str = "merged", heads: str = "none", sign_method: str = "total",
                   normalize: str = "count", seed: int = 0) -> MergeReport:
    """Merge the adapters `names` into a new LoRA adapter `into` (added, not activated); see the module
    docstring. rank: an integer (SVD), "concat" (exact, plain LoRA, linear), or "exact" (concat when it
    applies, else full-rank SVD). heads: "none", or "average" (Σ w_i head_i / Σ w_i, for adapters of one
    task, as in a soup). seed: DARE's random drops (one generator, modules in order)."""
    names = list(names)
    weights = check_merge_args(len(names), weights, density, method)
    if len(set(names)) != len(names):
        raise ConfigError(f"each adapter can be merged once, got {names}")
    if into in am.adapters:
        raise ConfigError(f"an adapter named {into!r} already exists; pick another name for the merge")
    if heads not in HEADS:
        raise ConfigError(f"heads must be one of {', '.join(HEADS)}, got {heads!r}")
    head_tensors = _averaged_heads(am, names, weights) if heads == "average" else {}
    deltas = [weight_deltas(am, n) for n in names]
    if rank == "exact":
        plain = method == "linear" and all(type(d) is LoraDelta and not d.pissa for n in names
                                           for _, _, d in am.layers(n) if not isinstance(d, HeadDelta))
        rank = "concat" if plain else max(min(d[p].shape) for d in deltas for p in d)
    if rank == "concat":
        factors = _concatenated(am, names, weights, method)
    elif isinstance(rank, int) and not isinstance(rank, bool) and rank > 0:
        merged = merge_deltas(deltas, method, weights, density, sign_method=sign_method, normalize=normalize, seed=seed)
        factors = {path: low_rank(dw, rank) for path, dw in merged.items()}
    else:
        raise ConfigError(f"rank must be a positive integer, 'concat' or 'exact', got {rank!r}")
    return _write_lora(am, factors, into, method, head_tensors)


def merge_deltas(deltas: list[dict[str, torch.Tensor]], method: str = "linear", weights=None,
                 density: float | None = None, *, sign_method: str = "total", normalize: str = "count",
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """{path: merged ΔW} from several {path: ΔW} (a path an input lacks counts as 0 for it)."""
    weights = check_merge_args(len(deltas), weights, density, method)
    generator = torch.Generator().manual_seed(seed)
    merged = {}
    for path in dict.fromkeys(p for d in deltas for p in d):
        shape = next(d[path].shape for d in deltas if path in d)
        taus = [d.get(path, torch.zeros(shape)) for d in deltas]
        merged[path] = merge_tensors(taus, weights, method, density, sign_method, normalize, generator)
    return merged


def add_delta_adapter(am, deltas: dict[str, torch.Tensor], rank: int, into: str = "merged",
                      method: str = "linear") -> MergeReport:
    """Write {path: ΔW} (e.g. merged from adapters of other models of the same base) into am as a LoRA
    adapter of rank `rank` (SVD); the base weights at every path must be am's own."""
    if into in am.adapters:
        raise ConfigError(f"an adapter named {into!r} already exists; pick another name for the merge")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ConfigError(f"rank must be a positive integer, got {rank!r}")
    return _write_lora(am, {path: low_rank(dw, rank) for path, dw in deltas.items()}, into, method, {})


def check_same_base(sources, target_am) -> None:
    """Every (am, name) source adapts the same base weights as target_am at the paths it changes."""
    target = {p: m for p, m in named_base_modules(target_am.base)}
    for am, name in sources:
        for path, layer, delta in am.layers(name):
            if isinstance(delta, HeadDelta):
                continue
            mine = target.get(path)
            if mine is None or not torch.equal(getattr(mine, "weight", None), layer.base_layer.weight):
                raise ConfigError(f"adapter {name!r} was trained on a different base: {path} "
                                  f"{'does not exist' if mine is None else 'has other weights'} in the target model")


def _write_lora(am, factors: dict, into: str, method: str, head_tensors: dict) -> MergeReport:
    report = MergeReport(into, method)
    ranks = {path: b.shape[1] for path, (b, _, _) in factors.items()}
    config = LoraConfig(r=max(ranks.values()), alpha=max(ranks.values()), targets=list(factors),
                        train_head=bool(head_tensors), rank_pattern=dict(ranks),
                        alpha_pattern={p: float(r) for p, r in ranks.items()})
    am.add(config, into, trainable=False, init=False)
    with torch.no_grad():
        for path, layer, delta in am.layers(into):
            if isinstance(delta, HeadDelta):
                delta.module.load_state_dict(head_tensors[path])
                continue
            b, a, error = factors[path]
            delta.B.copy_(b.reshape(delta.B.shape))
            delta.A.copy_(a.reshape(delta.A.shape))
            report.ranks[path], report.errors[path] = b.shape[1], error
    return report


def _averaged_heads(am, names, weights) -> dict[str, dict[str, torch.Tensor]]:
    """{head path: state dict} = Σ w_i head_i / Σ w_i over adapters that all trained the same heads."""
    per_adapter = [{p: d.module.state_dict() for p, _, d in am.layers(n) if isinstance(d, HeadDelta)} for n in names]
    if not per_adapter[0] or any(set(h) != set(per_adapter[0]) for h in per_adapter):
        raise ConfigError(f"heads='average' needs every adapter to have trained the same task head; heads per adapter: "
                          f"{ {n: sorted(h) for n, h in zip(names, per_adapter)} }")
    total = sum(weights)
    if total == 0:
        raise ConfigError("heads='average' divides by the sum of the weights, which is 0")
    return {path: {k: sum(w * h[path][k].float() for w, h in zip(weights, per_adapter)) / total
                   for k in per_adapter[0][path]} for path in per_adapter[0]}


def _concatenated(am, names, weights, method):
    if method != "linear":
        raise ConfigError(f"rank='concat' is exact for linear merges only; {method} changes entries of ΔW, so use an "
                          "integer rank (SVD)")
    factors: dict[str, list] = {}
    for name, w in zip(names, weights):
        for path, layer, delta in am.layers(name):
            if isinstance(delta, HeadDelta):
                continue
            if type(delta) is not LoraDelta or delta.pissa:
                raise ConfigError(f"rank='concat' joins plain LoRA factors; {name!r} at {path} is "
                                  f"{am.method_of(name).name}: use an integer rank (SVD of the merged ΔW)")
            a, b = delta.A.detach().flatten(1), delta.B.detach().flatten(1)
            factors.setdefault(path, []).append((b, a * (w * delta.scale)))
    return {path: (torch.cat([b for b, _ in parts], 1), torch.cat([a for _, a in parts], 0), 0.0)
            for path, parts in factors.items()}
