"""Which modules a config targets.

A target is one of: `"all-linear"` (every Linear/Conv1D but the output head), `"all-norm"`,
`"re:<regex>"` (full match on the module name), a role name (see `roles.py`), or a module name
matched exactly or as a dotted suffix (`"query"` matches `encoder.layer.0.attention.self.query`).
"""

from __future__ import annotations

import difflib
import re

from torch import nn

from petkit.core.errors import TargetError
from petkit.core.roles import family_of, role_regex

try:  # GPT-2's Conv1D is a linear layer with a transposed weight
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = ()

LINEAR_TYPES = (nn.Linear, Conv1D) if Conv1D else (nn.Linear,)
HEAD_NAMES = ("classifier", "score", "qa_outputs")  # freshly initialised task heads


def named_base_modules(model: nn.Module):
    """named_modules() as if no petkit wrapper were there: a wrapped layer shows as its base layer."""
    skip: list[str] = []
    for name, module in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if getattr(module, "_petkit_wrapper", False):
            skip.append(name)
            yield name, module.base_layer
            continue
        yield name, module


def is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or name.endswith(("RMSNorm", "LayerNorm"))


def output_head_names(model: nn.Module) -> set[str]:
    """Modules that produce the model's outputs: excluded from "all-linear"."""
    names = {n for n, _ in named_base_modules(model) if n.split(".")[-1] in HEAD_NAMES + ("lm_head",)}
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is not None:
        out = getattr(out, "base_layer", out)
        names |= {n for n, m in named_base_modules(model) if m is out}
    return names


def task_head_names(model: nn.Module) -> list[str]:
    """Freshly initialised classification heads (trained along with an adapter when train_head='auto')."""
    return [n for n, m in named_base_modules(model) if n.split(".")[-1] in HEAD_NAMES and any(True for _ in m.parameters())]


def pattern_matcher(pattern: str, model: nn.Module):
    """A predicate name -> bool for one target pattern (exact/suffix, regex, role)."""
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as exc:
            raise TargetError(f"target {pattern!r} is not a valid regex: {exc}") from None
        return lambda name: rx.fullmatch(name) is not None
    role = role_regex(pattern, family_of(model))
    if role is not None:
        rx = re.compile(rf"(^|.*\.){role}$")
        return lambda name: rx.fullmatch(name) is not None
    return lambda name: name == pattern or name.endswith("." + pattern)


def _keyword_matches(keyword: str, model: nn.Module) -> list[str]:
    if keyword == "all-linear":
        heads = output_head_names(model)
        return [n for n, m in named_base_modules(model) if isinstance(m, LINEAR_TYPES) and n not in heads]
    if keyword == "all-norm":
        return [n for n, m in named_base_modules(model) if is_norm(m)]
    if keyword == "all-bias":
        heads = output_head_names(model)
        return [n for n, m in named_base_modules(model) if isinstance(getattr(m, "bias", None), nn.Parameter)
                and isinstance(m, LINEAR_TYPES + (nn.Conv2d, nn.LayerNorm)) and n not in heads]
    return []


KEYWORDS = ("all-linear", "all-norm", "all-bias")


def resolve_targets(model: nn.Module, targets, exclude=(), allowed_types: tuple = ()) -> list[str]:
    """Module names matched by `targets` minus `exclude`, in model order.

    Raises TargetError when a pattern matches nothing (naming the closest module names) or matches a
    module whose type is not in `allowed_types`.
    """
    if not targets:
        raise TargetError("no targets given; name the modules to adapt, e.g. targets=['query', 'value'] or 'all-linear'")
    names = [n for n, _ in named_base_modules(model) if n]
    modules = dict(named_base_modules(model))
    chosen: set[str] = set()
    for pattern in targets:
        if pattern in KEYWORDS:
            hits = _keyword_matches(pattern, model)
        else:
            match = pattern_matcher(pattern, model)
            hits = [n for n in names if match(n)]
        if not hits:
            raise TargetError(_no_match_message(pattern, names))
        chosen.update(hits)
    excluders = [pattern_matcher(p, model) for p in exclude]
    chosen = {n for n in chosen if not any(m(n) for m in excluders)}
    if not chosen:
        raise TargetError(f"every module matched by {list(targets)} is excluded by {list(exclude)}")
    ordered = [n for n in names if n in chosen]
    if allowed_types:
        for n in ordered:
            if not isinstance(modules[n], allowed_types):
                kinds = ", ".join(sorted({t.__name__ for t in allowed_types}))
                raise TargetError(f"target {n!r} is a {type(modules[n]).__name__}, which this method cannot wrap; it wraps {kinds}")
    return ordered


def _no_match_message(pattern: str, names: list[str]) -> str:
    leaves = sorted({n.split(".")[-1] for n in names})
    close = difflib.get_close_matches(pattern.split(".")[-1], leaves, n=5, cutoff=0.5)
    close += [n for n in difflib.get_close_matches(pattern, names, n=3, cutoff=0.6) if n not in close]
    hint = f"; closest module names: {', '.join(close)}" if close else f"; module names end in e.g. {', '.join(leaves[:8])}"
    return f"target {pattern!r} matches no module in the model{hint}"


def matches_any(name: str, patterns, model: nn.Module) -> str | None:
    """The first pattern in `patterns` that matches `name` (used by rank/alpha patterns)."""
    for p in patterns:
        if pattern_matcher(p, model)(name):
            return p
    return None
