"""The inputs of one call to a transformers model's forward, by name: what root hooks of
model-level methods (prompts, prefixes) read and rewrite."""

from __future__ import annotations

import inspect

from petkit.core.errors import StateError


def call_inputs(signature: inspect.Signature, args: tuple, kwargs: dict, who: str) -> dict:
    """args and kwargs of a forward call as one name -> value dict (extra **kwargs flattened in)."""
    try:
        inputs = signature.bind_partial(*args, **kwargs).arguments
    except TypeError as exc:
        raise StateError(f"{who} cannot read this call's inputs ({exc})") from None
    extra = inputs.pop("kwargs", None)
    inputs.update(extra if isinstance(extra, dict) else {})
    return inputs


CACHE_NAMES = ("cache", "past_key_values")  # transformers 5 renames past_key_values (argument and output) to cache


def find_cache(source):
    """The KV cache in a call's inputs (a dict) or in a model output, under either name; None if absent."""
    get = source.get if isinstance(source, dict) else (lambda k: getattr(source, k, None))
    return next((c for c in map(get, CACHE_NAMES) if c is not None), None)


def cache_argument(forward) -> str:
    """The name this forward takes its KV cache by."""
    parameters = inspect.signature(forward).parameters
    return next((k for k in CACHE_NAMES if k in parameters), "past_key_values")


def cached_length(inputs: dict) -> int:
    """How many tokens the call's KV cache holds already (0 without one)."""
    cache = find_cache(inputs)
    if cache is None:
        return 0
    length = getattr(cache, "get_seq_length", None)
    return int(length()) if callable(length) else 1


class PaddingReader:
    """The padding of the call under way (attention_mask == 0, or None), read by a pre-hook on model
    (installed through `hook(module, pre, fn)`, a ModelDelta's)."""

    def __init__(self, hook, model, who: str):
        self.padding = None
        self._signature = inspect.signature(model.forward)
        self._who = who
        hook(model, True, self._read)

    def _read(self, module, args, kwargs):
        mask = call_inputs(self._signature, args, kwargs, self._who).get("attention_mask")
        self.padding = None if mask is None else mask == 0
