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

SAMPLES_PER_TENSOR = 4


def _base_parameters(model: nn.Module):
    heads = tuple(h + "." for h in task_head_names(model))
    for name, p in model.named_parameters():
        clean = name.replace(".base_layer.", ".")
        if ".deltas." in name or clean.startswith(heads):
            continue
        yield clean, p


def fingerprint(model: nn.Module) -> dict:
    arch = hashlib.sha256()
    sample: list[float] = []
    count = 0
    for name, p in sorted(_base_parameters(model), key=lambda kv: kv[0]):
        arch.update(f"{name}:{tuple(p.shape)};".encode())
        flat = p.detach().reshape(-1)
        count += flat.numel()
        idx = torch.linspace(0, flat.numel() - 1, SAMPLES_PER_TENSOR).long()
        sample.extend(round(float(v), 6) for v in flat[idx].float())
    return {"arch": arch.hexdigest()[:16], "num_parameters": count, "sample": sample}


def mismatch(saved: dict, current: dict) -> str | None:
    """Why two fingerprints differ, or None when they describe the same base."""
    if not isinstance(saved, dict) or "arch" not in saved:
        return None  # files from tools that record no fingerprint (e.g. PEFT) cannot be checked
    if saved.get("arch") != current["arch"]:
        return (f"the adapter was saved for a model with {saved.get('num_parameters', '?')} base parameters "
                f"(architecture {saved.get('arch')}), this one has {current['num_parameters']} ({current['arch']})")
    a = torch.tensor(saved.get("sample", []), dtype=torch.float64)
    b = torch.tensor(current["sample"], dtype=torch.float64)
    if a.shape != b.shape:
        return "the adapter's base-model fingerprint is malformed"
    close = (a - b).abs() <= 1e-2 * (a.abs() + b.abs()) + 1e-3
    if close.float().mean() < 0.9:
        return "the base weights differ from those the adapter was trained on (same architecture, other checkpoint)"
    return None
