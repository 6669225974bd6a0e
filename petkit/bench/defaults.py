"""Per-method bench defaults, read from the method registry, and the two presets.

A method's bench defaults live in its registry record (`bench=MethodDefaults(...)` in its own file).
A method without them is still bench-able by name: it runs with its config's own defaults, the
generic learning-rate grid and its registry kind as its plot family. Give a method defaults only
when its config defaults are not what a benchmark should compare (e.g. LoRA's targets). Short
budgets (tens to hundreds of steps) want the upper end of each method's usual range of rates.
"""

from __future__ import annotations

from petkit.core.registry import MethodDefaults, all_methods

__all__ = ["FULL_PRESET", "GENERIC_LRS", "MethodDefaults", "method_defaults"]

GENERIC_LRS = (1e-4, 1e-3, 1e-2)  # a decade apart: for methods without defaults, where we know nothing

# The default preset is BenchConfig's own defaults (see config.py): MiniLM on BBC News; LoRA, IA3,
# BitFit, full fine-tuning and linear probing; 2 seeds; 40 steps of 8 examples at 64 tokens (one pass
# over 320 training examples); 100 dev and 100 test examples. About 5 minutes on 2 CPU cores.
# `--full`: every registered method on every local classification dataset, at paper-like scale.
FULL_PRESET = {
    "methods": "all", "tasks": "local", "seeds": 3, "steps": 300, "batch_size": 16, "max_length": 128,
    "max_train": 2000, "max_eval": 500,
}


def method_defaults(name: str) -> MethodDefaults:
    record = next((m.bench for m in all_methods() if m.name == name), None)
    return record or MethodDefaults(lrs=GENERIC_LRS)
