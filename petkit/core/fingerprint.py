"""A base model's fingerprint: architecture hash + a sample of weight values.

Saved with every adapter; loading onto a model whose fingerprint differs fails unless forced. The
freshly initialised task head is left out (it is random on every load of the same checkpoint). The
value sample is compared with a tolerance, so a bf16 copy of the same base still matches while a
different checkpoint of the same architecture does not.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from petkit.core.module_types import QuantizedWeight
from petkit.core.targeting import task_head_names
from petkit.core.unwrapped import base_parameters, named_base_modules

SAMPLES_PER_TENSOR = 4


def _fingerprinted(model: nn.Module):
    """The base parameters but the task head's; a low-bit layer's weight (a buffer of codes) counts as
    the float weight it stands for, so a quantised copy of a base has the base's fingerprint."""
    heads = tuple(h + "." for h in task_head_names(model))
    params = list(base_parameters(model).items())
    stored: set[int] = set()
    for name, m in named_base_modules(model):
        # a low-bit output head sharing the embedding's codes counts once, as a tied parameter does
        if isinstance(m, QuantizedWeight) and id(next(m.buffers())) not in stored:
            stored.add(id(next(m.buffers())))
            params.append((f"{name}.weight", m))
    return [(name, p) for name, p in params if not name.startswith(heads)]


def fingerprint(model: nn.Module) -> dict:
    arch = hashlib.sha256()
    sample: list[float] = []
    tolerance: list[float] = []
    count = 0
    for name, p in sorted(_fingerprinted(model), key=lambda kv: kv[0]):
        low_bit = isinstance(p, QuantizedWeight)
        shape = p.float_shape() if low_bit else tuple(p.shape)
        arch.update(f"{name}:{shape};".encode())
        numel = math.prod(shape)
        count += numel
        if numel == 0:
            continue  # nothing to sample (and linspace would index out of range)
        # Integer positions: float32 linspace rounds past the end for tensors of > 2**24 elements.
        idx = torch.tensor([i * (numel - 1) // (SAMPLES_PER_TENSOR - 1) for i in range(SAMPLES_PER_TENSOR)])
        values, bounds = p.sample(idx) if low_bit else (p.detach().reshape(-1)[idx], torch.zeros(len(idx)))
        sample.extend(round(float(v), 6) for v in values.float())
        tolerance.extend(round(float(v), 6) for v in bounds.float())
    found = {"arch": arch.hexdigest()[:16], "num_parameters": count, "sample": sample}
    if any(tolerance):  # only low-bit bases carry one, so float bases' fingerprints read as before
        found["tolerance"] = tolerance
    return found


def mismatch(saved: dict, current: dict) -> str | None:
    """Why two fingerprints differ, or None when they describe the same base."""
    if not isinstance(saved, dict) or "arch" not in saved:
        return None  # files from tools that record no fingerprint (e.g. PEFT) cannot be checked
    if saved.get("arch") != current["arch"]:
        return (f"the adapter was saved for a model with {_short(saved.get('num_parameters', '?'))} base parameters "
                f"(architecture {_short(saved.get('arch'))}), this one has {current['num_parameters']} ({current['arch']})")
    # The saved sample comes from a file: anything but a list of numbers of the right length is garbage.
    sample = saved.get("sample")
    try:
        if not isinstance(sample, list) or any(isinstance(v, bool) for v in sample):
            raise TypeError
        a = torch.tensor([float(v) for v in sample], dtype=torch.float64)
    except (TypeError, ValueError, OverflowError):
        a = None
    if a is None or len(a) != len(current["sample"]):
        return "the adapter's base-model fingerprint is malformed"
    b = torch.tensor(current["sample"], dtype=torch.float64)
    rounding = torch.maximum(_tolerance(saved, len(a)), _tolerance(current, len(a)))  # a low-bit base's rounding
    close = (a - b).abs() <= 1e-2 * (a.abs() + b.abs()) + 1e-3 + rounding
    if close.float().mean() < 0.9:
        return "the base weights differ from those the adapter was trained on (same architecture, other checkpoint)"
    return None


def _tolerance(found: dict, n: int) -> torch.Tensor:
    try:
        t = torch.tensor([float(v) for v in found.get("tolerance") or [0.0] * n], dtype=torch.float64)
    except (TypeError, ValueError, OverflowError):
        t = None
    return t.abs() if t is not None and len(t) == n and bool(t.isfinite().all()) else torch.zeros(n, dtype=torch.float64)


def _short(value) -> str:
    text = str(value)  # from a file: keep a garbage value from flooding the message
    return text if len(text) <= 40 else text[:37] + "..."
