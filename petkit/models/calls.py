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


def cached_length(inputs: dict) -> int:
    """How many tokens the call's KV cache holds already (0 without one)."""
    cache = next((inputs[k] for k in ("past_key_values", "cache") if inputs.get(k) is not None), None)
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
