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
from petkit.core.module_types import LINEAR_TYPES, is_norm
from petkit.core.roles import MissingRole, as_on_model, role_paths
from petkit.core.unwrapped import named_base_modules

HEAD_NAMES = ("classifier", "score", "qa_outputs", "classification_head", "regressor")  # freshly initialised task heads


def output_head_names(model: nn.Module) -> set[str]:
    """Modules that produce the model's outputs (the LM head, the whole task head): "all-linear"
    and "all-bias" leave them and everything inside them out."""
    names = {n for n, _ in named_base_modules(model) if n.split(".")[-1] in HEAD_NAMES + ("lm_head",)}
    out = _output_embeddings(model)
    if out is not None:
        names |= {n for n, m in named_base_modules(model) if m is out}
    return names | set(task_head_names(model))


def _output_embeddings(model: nn.Module) -> nn.Module | None:
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    return getattr(out, "base_layer", out)


def task_head_names(model: nn.Module) -> list[str]:
    """The freshly initialised task head, whole (trained along with an adapter when train_head='auto').

    In a transformers model with a head named classifier/score/qa_outputs/classification_head, that
    is every child with parameters beside the base model (its `base_model_prefix` child) and the
    output embeddings: RoBERTa's classifier (dense + out_proj), DistilBERT's pre_classifier and
    classifier, DeBERTa's pooler and classifier. Where the base model sits under another name (CLIP's
    vision_model) or outside transformers, the modules with one of those names.
    """
    for path, m in named_base_modules(model):
        prefix = getattr(m, "base_model_prefix", None)
        if not isinstance(prefix, str) or getattr(m, "config", None) is None:
            continue
        out = _output_embeddings(m)
        children = [(n, c) for n, c in m.named_children() if any(True for _ in c.parameters())]
        if prefix not in dict(children) or not any(n in HEAD_NAMES for n, _ in children):
            break  # no task head of its own beside its base model: perhaps the model around it has one
        return [f"{path}.{n}" if path else n for n, c in children if n != prefix
                and (out is None or not any(x is out or getattr(x, "base_layer", None) is out for x in c.modules()))]
    return [n for n, m in named_base_modules(model) if n.split(".")[-1] in HEAD_NAMES and any(True for _ in m.parameters())]


def inside(name: str, modules) -> bool:
    """Whether module `name` is one of `modules` or sits inside one of them."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def pattern_matcher(pattern: str, model: nn.Module, strict: bool = True):
    """A predicate name -> bool for one target pattern (exact/suffix, regex, role). With strict=False a
    role the model does not have matches nothing instead of raising."""
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as exc:
            raise TargetError(f"target {pattern!r} is not a valid regex: {exc}") from None
        return lambda name: rx.fullmatch(name) is not None
    try:
        paths = role_paths(pattern, model)
    except MissingRole:
        if strict:
            raise
        paths = frozenset()
    if paths is not None:
        return lambda name: name in paths
    return lambda name: name == pattern or name.endswith("." + pattern)


def _keyword_matches(keyword: str, model: nn.Module) -> list[str]:
    if keyword == "all-linear":
        heads = output_head_names(model)
        return [n for n, m in named_base_modules(model) if isinstance(m, LINEAR_TYPES) and not inside(n, heads)]
    if keyword == "all-norm":
        return [n for n, m in named_base_modules(model) if is_norm(m)]
    if keyword == "all-bias":
        heads = output_head_names(model)
        return [n for n, m in named_base_modules(model) if isinstance(getattr(m, "bias", None), nn.Parameter)
                and isinstance(m, LINEAR_TYPES + (nn.Conv2d, nn.LayerNorm)) and not inside(n, heads)]
    return []


KEYWORDS = ("all-linear", "all-norm", "all-bias")


def resolve_targets(model: nn.Module, targets, exclude=(), allowed_types: tuple = (), protected=(),
                    optional: bool = False) -> list[str]:
    """Module names matched by `targets` minus `exclude`, in model order.

    Modules inside `protected` (a task head trained whole) are left out, as PEFT leaves out targets
    inside modules_to_save. Raises TargetError when a pattern matches nothing (naming the closest
    module names), only protected modules, or a module whose type is not in `allowed_types`. With
    optional=True (a method's default targets) a pattern the model lacks is skipped instead.
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
            match = pattern_matcher(pattern, model, strict=not optional)
            hits = [n for n in names if match(n)]
        kept = [n for n in hits if not inside(n, protected)]
        if not kept and not optional:
            raise TargetError(_head_message(pattern, hits) if hits else _no_match_message(pattern, names))
        chosen.update(kept)
    excluders = [pattern_matcher(p, model) for p in exclude]
    chosen = {n for n in chosen if not any(m(n) for m in excluders)}
    if not chosen:
        if optional:
            raise TargetError(f"none of the default targets {list(targets)} is in {type(model).__name__}; name the "
                              "modules to adapt, e.g. targets=['query', 'value'] or 'all-linear'")
        raise TargetError(f"every module matched by {list(targets)} is excluded by {list(exclude)}")
    ordered = [n for n in names if n in chosen]
    if allowed_types:
        for n in ordered:
            if not isinstance(modules[n], allowed_types):
                kinds = ", ".join(sorted({t.__name__ for t in allowed_types}))
                raise TargetError(f"target {n!r} is a {type(modules[n]).__name__}, which this method cannot wrap; it wraps {kinds}")
    return ordered


def method_targets(model: nn.Module, config, method, protected=()) -> list[str]:
    """The modules a weight/output method adapts: the config's targets, or else the method's defaults
    (a tuple, or a function of the model: LoRA's are PEFT's choice for the architecture), as this
    model has them (`as_on_model`: q and v are the fused qkv layer where the model fuses them)."""
    if config.targets:
        return resolve_targets(model, config.targets, config.exclude, method.layer_types, protected)
    defaults = method.default_targets(model) if callable(method.default_targets) else method.default_targets
    return resolve_targets(model, as_on_model(model, defaults), config.exclude, method.layer_types, protected,
                           optional=True)


def _head_message(pattern: str, hits: list[str]) -> str:
    return (f"target {pattern!r} matches only modules of the task head ({', '.join(hits[:3])}), which is trained whole "
            "along with the adapter (PEFT's modules_to_save); pass train_head=False to adapt it with the method instead")


def _no_match_message(pattern: str, names: list[str]) -> str:
    leaves = sorted({n.split(".")[-1] for n in names})
    close = difflib.get_close_matches(pattern.split(".")[-1], leaves, n=5, cutoff=0.5)
    close += [n for n in difflib.get_close_matches(pattern, names, n=3, cutoff=0.6) if n not in close]
    hint = f"; closest module names: {', '.join(close)}" if close else f"; module names end in e.g. {', '.join(leaves[:8])}"
    return f"target {pattern!r} matches no module in the model{hint}"


def matches_any(name: str, patterns, model: nn.Module) -> str | None:
    """The first pattern in `patterns` that matches `name` (used by rank/alpha patterns); a role the
    model does not have matches nothing."""
    for p in patterns:
        if pattern_matcher(p, model, strict=False)(name):
            return p
    return None
