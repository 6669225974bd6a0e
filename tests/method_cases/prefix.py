"""Matrix cases of prefix tuning and deep prompts: key/value prefixes (or, on ViT, prompt tokens) in every layer."""

from __future__ import annotations

import petkit
from method_cases._checks import differs_from_base
from petkit.models.structure import attention_shape, hidden_size


def prefix_count(am, n) -> int:
    """m·L·2·h_kv·d_h, or with the MLP m·d + (d+1)·hidden + (hidden+1)·L·2·h_kv·d_h."""
    cfg, delta = am.adapter_config(n), am.model_deltas[n]
    kv_heads, head_dim = attention_shape(am.base.config)
    width = len(delta.attention) * 2 * kv_heads * head_dim
    if not cfg.projection:
        return cfg.num_virtual_tokens * width
    d = hidden_size(am.base.config)
    hidden = cfg.projection_hidden or d
    return cfg.num_virtual_tokens * d + (d + 1) * hidden + (hidden + 1) * width


CASES = {
    "prefix": lambda fam: petkit.PrefixTuningConfig(num_virtual_tokens=3),
    "prefix-direct": lambda fam: petkit.PrefixTuningConfig(num_virtual_tokens=2, projection=False),
}
FORMULAS = {"prefix": prefix_count}
INIT_CHECKS = {"prefix": differs_from_base, "prefix-direct": differs_from_base}
TRAIN_LRS = {"prefix": 1e-3}


def deep_prompt_count(am, n) -> int:
    """ViT (VPT-deep): L·m·d; text (P-tuning v2): the prefix count without the MLP."""
    delta = am.model_deltas[n]
    if hasattr(delta, "prompts"):
        return len(delta.layers) * delta.m * am.base.config.hidden_size
    return delta.m * len(delta.attention) * 2 * delta.kv_heads * delta.head_dim


CASES["deep-prompt"] = lambda fam: petkit.DeepPromptConfig(num_virtual_tokens=2)
FORMULAS["deep_prompt"] = deep_prompt_count
INIT_CHECKS["deep-prompt"] = differs_from_base
