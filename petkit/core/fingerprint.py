"""A base model's fingerprint: architecture hash + a sample of weight values.

Saved with every adapter; loading onto a model whose fingerprint differs fails unless forced. The
freshly initialised task head is left out (it is random on every load of the same checkpoint). The
value sample is compared with a tolerance, so a bf16 copy of the same base still matches while a
different checkpoint of the same architecture does not.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from petkit.core.targeting import task_head_names
from petkit.core.unwrapped import base_parameters

SAMPLES_PER_TENSOR = 4


def _fingerprinted(model: nn.Module):
    """The base parameters but the task head's."""
    heads = tuple(h + "." for h in task_head_names(model))
    return [(name, p) for name, p in base_parameters(model).items() if not name.startswith(heads)]


def fingerprint(model: nn.Module) -> dict:
    arch = hashlib.sha256()
    sample: list[float] = []
    count = 0
    for name, p in sorted(_fingerprinted(model), key=lambda kv: kv[0]):
        arch.update(f"{name}:{tuple(p.shape)};".encode())
        flat = p.detach().reshape(-1)
        count += flat.numel()
        if flat.numel() == 0:
            continue  # nothing to sample (and linspace would index out of range)
        # Integer positions: float32 linspace rounds past the end for tensors of > 2**24 elements.
        last = flat.numel() - 1
        idx = torch.tensor([i * last // (SAMPLES_PER_TENSOR - 1) for i in range(SAMPLES_PER_TENSOR)])
        sample.extend(round(float(v), 6) for v in flat[idx].float())
    return {"arch": arch.hexdigest()[:16], "num_parameters": count, "sample": sample}


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
    close = (a - b).abs() <= 1e-2 * (a.abs() + b.abs()) + 1e-3
    if close.float().mean() < 0.9:
        return "the base weights differ from those the adapter was trained on (same architecture, other checkpoint)"
    return None


def _short(value) -> str:
    text = str(value)  # from a file: keep a garbage value from flooding the message
    return text if len(text) <= 40 else text[:37] + "..."
