"""Matrix cases of ladder side-tuning: a 1/r-width side network beside the frozen backbone."""

from __future__ import annotations

import petkit
from method_cases._checks import differs_from_base


def lst_count(am, n) -> int:
    """Side layers at width w = d/r, FFN f = d_ff/r, plus Down_0, the Down_i, the gates α and Up."""
    cfg, config = am.adapter_config(n), am.base.config
    d, r = config.hidden_size, cfg.reduction
    w, f = d // r, config.intermediate_size // r
    ladders = len(cfg.side_layers or range(config.num_hidden_layers))
    if config.model_type == "bert":  # q, k, v, o with bias; 2 LayerNorms; FFN in and out with bias
        layer = 4 * (w * w + w) + 2 * 2 * w + (w * f + f) + (f * w + w)
        final = 0
    else:  # Llama: q, o (w × w), k, v (w × kv width), gate, up, down, 2 RMSNorms; a final RMSNorm
        kv = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads) // r
        layer = 2 * w * w + 2 * w * kv + 3 * w * f + 2 * w
        final = w
    return ladders * layer + final + (ladders + 1) * (d * w + w) + ladders + (w * d + d)


CASES = {
    "lst": lambda fam: fam in ("bert", "llama") and petkit.LstConfig(reduction=4),
    "lst-some-layers-random": lambda fam: fam in ("bert", "llama") and petkit.LstConfig(
        reduction=2, side_layers=[1], init="random"),
}
FORMULAS = {"lst": lst_count}
INIT_CHECKS = {"lst": differs_from_base, "lst-some-layers-random": differs_from_base}
