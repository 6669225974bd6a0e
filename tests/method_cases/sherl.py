"""Matrix cases of SHERL: an aggregate of the frozen tiers feeds the last pre-trained layer(s)."""

from __future__ import annotations

import petkit
from method_cases._checks import differs_from_base


def sherl_count(am, n) -> int:
    """(J+1) tiers of Linear d→h + LayerNorm h, the guidance Linear h→1, W_up h→d, LayerNorm d, β."""
    cfg, config = am.adapter_config(n), am.base.config
    d = getattr(config, "hidden_size", None) or config.n_embd
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    h = d // cfg.downsample
    tiers = layers - cfg.late_layers + 1
    return tiers * (d * h + h + 2 * h) + (h + 1) + (h * d + d) + 2 * d + 1


CASES = {"sherl": lambda fam: fam != "t5" and petkit.SherlConfig()}
FORMULAS = {"sherl": sherl_count}
INIT_CHECKS = {"sherl": differs_from_base}
