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
    # issue 4 (seed methods I); MiniLM is 384 wide with 6 layers
    "bottleneck": MethodDefaults({"variant": "houlsby", "bottleneck": 32}, (1e-3, 5e-3), "adapter"),
    "vlpet": MethodDefaults({"granularity": "large", "bottleneck": 48, "heads": 4, "gate_bottleneck": 48},
                            (1e-3, 5e-3), "adapter"),
    "svfit": MethodDefaults({"targets": ["attn.q", "attn.v"]}, (5e-3, 2e-2), "rescaling"),  # r by 99% energy
    # r=16: r·out per matrix, the same trainable count as LoRA r=8's r·(in + out) on these square weights
    "miss": MethodDefaults({"r": 16, "targets": ["attn.q", "attn.v"]}, (5e-4, 2e-3), "low-rank"),
    "telly": MethodDefaults({}, (3e-5, 1e-4), "selective"),  # fraction 0.5: MiniLM freezes embeddings + 3 of 6 layers
    "dsee": MethodDefaults({"r": 8, "alpha": 16, "nnz": 16, "targets": ["attn.q", "attn.v"]}, (1e-3, 5e-3), "sparse"),
    "sara": MethodDefaults({}, (5e-4, 2e-3), "sparse"),  # |w| < 2e-3: 3.4% of MiniLM's linear weights
    "apet": MethodDefaults({}, (1e-3, 5e-3), "sparse"),  # LoRA r=8 on q, v's budget at random elements
    "lowbit-lora": MethodDefaults({"bits": 1, "r": 8, "scale": 1.0, "targets": ["attn.q", "attn.v"]},
                                  (1e-3, 5e-3), "low-bit"),
    "lowbit-adapter": MethodDefaults({"bits": 1, "r": 8, "scale": 0.1}, (3e-3, 1e-2), "low-bit"),
    "mora": MethodDefaults({"r": 8, "top_k": 2, "targets": ["attn.q", "attn.v"]}, (1e-3, 5e-3), "low-rank"),
    # issue 5 (seed methods II); prompt tuning wants large rates (Lester et al. train at 0.3 with Adafactor)
    "prompt": MethodDefaults({"num_virtual_tokens": 20}, (3e-3, 3e-2), "prompt"),
    "prefix": MethodDefaults({"num_virtual_tokens": 20}, (1e-3, 5e-3), "prompt"),  # through the MLP (the paper's)
    "deep_prompt": MethodDefaults({"num_virtual_tokens": 10}, (3e-3, 1e-2), "prompt"),  # P-tuning v2's rates
    "apt": MethodDefaults({"num_virtual_tokens": 50}, (1e-3, 5e-3), "prompt"),
    "dvpt": MethodDefaults({"bottleneck": 32, "num_queries": 10, "heads": 4}, (1e-3, 5e-3), "prompt"),
    # the paper's DGCNN generator (k=20, width d) and head: a training step costs ~1.2x LoRA's on MiniLM
    "idpt": MethodDefaults({"num_virtual_tokens": 1}, (1e-3, 5e-3), "prompt"),
    "lst": MethodDefaults({"reduction": 8}, (1e-3, 3e-3), "side network"),  # LST trains at 3e-3
    "sherl": MethodDefaults({"late_layers": 1}, (1e-3, 3e-3), "side network"),
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
