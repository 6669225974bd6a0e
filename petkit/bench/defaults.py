"""The one table of per-method bench defaults, and the two presets.

A method missing from METHODS is still bench-able by name: it runs with its config's own defaults,
the generic learning-rate grid and its registry kind as its plot family. Add a row only when the
config defaults are not what a benchmark should compare (e.g. LoRA's targets).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MethodDefaults:
    settings: dict = field(default_factory=dict)  # method config fields (the name is added by the bench)
    lrs: tuple[float, ...] = ()                    # learning-rate grid searched on dev (seed 0)
    family: str = ""                               # colour group in the plots


# Short budgets (tens to hundreds of steps) want the upper end of each method's usual range.
METHODS: dict[str, MethodDefaults] = {
    "lora": MethodDefaults({"r": 8, "alpha": 16, "targets": ["attn.q", "attn.v"]}, (1e-3, 5e-3), "low-rank"),
    "dora": MethodDefaults({"r": 8, "alpha": 16, "targets": ["attn.q", "attn.v"]}, (1e-3, 5e-3), "low-rank"),
    "ia3": MethodDefaults({}, (3e-3, 1e-2), "rescaling"),  # targets: attention k, v and the FFN output
    "bitfit": MethodDefaults({}, (1e-3, 5e-3), "selective"),
    "layernorm": MethodDefaults({}, (1e-3, 5e-3), "selective"),
    "probe": MethodDefaults({}, (1e-2, 3e-2), "baseline"),
    "full": MethodDefaults({}, (3e-5, 1e-4), "baseline"),
}
GENERIC_LRS = (1e-4, 1e-3, 1e-2)  # a decade apart: for methods without a row, where we know nothing

# The default preset is BenchConfig's own defaults (see config.py): MiniLM on BBC News; LoRA, IA3,
# BitFit, full fine-tuning and linear probing; 2 seeds; 40 steps of 8 examples at 64 tokens (one pass
# over 320 training examples); 100 dev and 100 test examples. About 5 minutes on 2 CPU cores.
# `--full`: every registered method on every local classification dataset, at paper-like scale.
FULL_PRESET = {
    "methods": "all", "tasks": "local", "seeds": 3, "steps": 300, "batch_size": 16, "max_length": 128,
    "max_train": 2000, "max_eval": 500,
}


def method_defaults(name: str) -> MethodDefaults:
    return METHODS.get(name, MethodDefaults(lrs=GENERIC_LRS))
