"""Model soups (Wortsman et al., ICML 2022): average models fine-tuned from one starting point.

Uniform soup: the plain mean of all ingredients. Greedy soup (the paper's Algorithm 1): sort the
ingredients by their own held-out score, start from the best, and add the next one if the held-out
score of the uniform mean of the accepted ones plus it is not worse (≥, the paper; `strict=True`:
>, the official code); one pass, no revisiting. By construction the greedy soup's held-out score is
at least the best ingredient's.

Two kinds of ingredients:
- full models: state dicts averaged tensor by tensor in float32 (`uniform_soup`, `greedy_soup` with an
  `evaluate(state_dict) -> score` callback);
- adapters of one AdaptedModel (`adapter_soup`): averaged in ΔW space (never their factors) with
  their task heads averaged, written as a new LoRA adapter at exact rank (`merge_adapters`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from petkit.core.errors import ConfigError
from petkit.core.head import HeadDelta
from petkit.merge.adapters import merge_adapters

_CANDIDATE = "_soup_candidate"


@dataclass
class SoupResult:
    """Accepted ingredients in order, every ingredient's own score, the soup's score, and each greedy
    step as (candidate, score of the soup with it, accepted)."""

    ingredients: list[str]
    scores: dict[str, float]
    soup_score: float | None = None
    steps: list[tuple[str, float, bool]] = field(default_factory=list)


def _check_ingredients(names: Sequence[str]) -> None:
    if len(names) < 2:
        raise ConfigError(f"a soup needs at least two ingredients, got {len(names)}: {list(names)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"each ingredient can be used once, got {list(names)}")


def uniform_soup(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of state dicts with the same keys and shapes (float tensors averaged in float32 and cast
    back; other tensors, e.g. integer buffers, must be equal and are kept)."""
    _check_ingredients([str(i) for i in range(len(state_dicts))])
    keys = list(state_dicts[0])
    for i, sd in enumerate(state_dicts[1:], 1):
        if list(sd) != keys:
            missing, extra = sorted(set(keys) - set(sd)), sorted(set(sd) - set(keys))
            raise ConfigError(f"ingredient {i} has other tensors than ingredient 0 (missing {missing[:3]}, extra "
                              f"{extra[:3]}): soups average models of one architecture")
    soup = {}
    for k in keys:
        values = [sd[k] for sd in state_dicts]
        if any(v.shape != values[0].shape for v in values):
            raise ConfigError(f"{k} has shapes {sorted({tuple(v.shape) for v in values})} across ingredients")
        if values[0].is_floating_point():
            soup[k] = (sum(v.float() for v in values) / len(values)).to(values[0].dtype)
        elif any(not torch.equal(v, values[0]) for v in values):
            raise ConfigError(f"{k} is a non-float tensor that differs between ingredients; it cannot be averaged")
        else:
            soup[k] = values[0].clone()
    return soup


def greedy_order(scores: Mapping[str, float]) -> list[str]:
    """Best held-out score first; ties keep the given order."""
    return sorted(scores, key=lambda n: -scores[n])


def greedy_soup(state_dicts: Mapping[str, Mapping[str, torch.Tensor]], evaluate: Callable[[dict], float], *,
                strict: bool = False) -> tuple[dict[str, torch.Tensor], SoupResult]:
    """Greedy soup of full models; evaluate(state_dict) returns the held-out score (higher is better)."""
    names = list(state_dicts)
    _check_ingredients(names)
    scores = {n: float(evaluate(dict(state_dicts[n]))) for n in names}
    result = _greedy(names, scores, lambda chosen: float(evaluate(_mean(state_dicts, chosen))), strict)
    return _mean(state_dicts, result.ingredients), result


def _mean(state_dicts, chosen: list[str]) -> dict[str, torch.Tensor]:
    return uniform_soup([state_dicts[n] for n in chosen]) if len(chosen) > 1 else dict(state_dicts[chosen[0]])


def adapter_soup(am, names: Sequence[str], evaluate: Callable | None = None, *, into: str = "soup",
                 strict: bool = False) -> SoupResult:
    """Soup of adapters of one AdaptedModel into a new adapter `into`: greedy when evaluate(am) -> held-out
    score is given (called with the candidate active), uniform otherwise."""
    names = list(names)
    _check_ingredients(names)
    if into in am.adapters or _CANDIDATE in am.adapters:
        raise ConfigError(f"an adapter named {into!r} already exists; pick another name for the soup")
    active = am.active
    try:
        if evaluate is None:
            result = SoupResult(names, {})
        else:
            scores = {}
            for n in names:
                am.set_active(n)
                scores[n] = float(evaluate(am))
            result = _greedy(names, scores, lambda chosen: _score_mean(am, chosen, evaluate), strict)
        _mean_adapter(am, result.ingredients, into)
    finally:
        am.set_active(active)
    return result


def _score_mean(am, chosen: list[str], evaluate) -> float:
    _mean_adapter(am, chosen, _CANDIDATE)
    try:
        am.set_active(_CANDIDATE)
        return float(evaluate(am))
    finally:
        am.delete(_CANDIDATE)


def _mean_adapter(am, chosen: list[str], into: str) -> None:
    """The uniform mean of the chosen adapters (one: the ingredient itself) as adapter `into`."""
    heads = "average" if any(isinstance(d, HeadDelta) for _, _, d in am.layers(chosen[0])) else "none"
    merge_adapters(am, chosen, weights=[1.0 / len(chosen)] * len(chosen), rank="exact", into=into, heads=heads)


def _greedy(names: list[str], scores: dict[str, float], score_of: Callable[[list[str]], float],
            strict: bool) -> SoupResult:
    order = greedy_order({n: scores[n] for n in names})
    chosen, best = [order[0]], scores[order[0]]
    result = SoupResult(chosen, scores)
    for candidate in order[1:]:
        score = score_of(chosen + [candidate])
        accepted = score > best or (not strict and score == best)
        result.steps.append((candidate, score, accepted))
        if accepted:
            chosen.append(candidate)
            best = score
    result.soup_score = best
    return result
