"""Matrix cases of DVPT: learnable queries over a bottleneck of each layer's output (encoders)."""

from __future__ import annotations

import petkit


def dvpt_count(am, n) -> int:
    """Per module d·r + r (down) + m·r (queries) + 4r² + 4r (attention) + r·d + d (up); one or L modules."""
    cfg, delta = am.adapter_config(n), am.model_deltas[n]
    d, r, m = am.base.config.hidden_size, cfg.bottleneck, cfg.num_queries
    one = d * r + r + m * r + 4 * r * r + 4 * r + r * d + d
    return one * (1 if cfg.shared else len(delta.layers))


CASES = {
    "dvpt": lambda fam: fam in ("bert", "vit") and petkit.DvptConfig(bottleneck=8, num_queries=3, heads=2),
    "dvpt-per-layer": lambda fam: fam in ("bert", "vit") and petkit.DvptConfig(bottleneck=4, num_queries=2,
                                                                                 heads=1, shared=False),
}
FORMULAS = {"dvpt": dvpt_count}
