"""Adapters take the floating dtype and device of the weights they adapt.

A delta is built in torch's default dtype (float32); on a float64, bfloat16 or float16 base its
matmuls would then mix dtypes and fail. Moving the delta to the base's dtype makes every method run
on such bases. (PEFT keeps half-precision adapters in float32 and casts inputs; petkit trains them in
the base's dtype.)
"""

from __future__ import annotations

from torch import nn


def on_dtype_of(delta: nn.Module, base: nn.Module) -> nn.Module:
    """`delta`, moved to the dtype and device of `base`'s first floating parameter (integer tensors such
    as indices keep their dtype); unchanged when `base` has none (e.g. a quantized layer)."""
    reference = next((p for p in base.parameters() if p.is_floating_point()), None)
    if reference is None:
        return delta
    return delta.to(device=reference.device, dtype=reference.dtype)
