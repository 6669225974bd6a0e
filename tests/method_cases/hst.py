"""Matrix cases of HST: a hierarchical side network beside a frozen ViT (ViT only)."""

from __future__ import annotations

import petkit
from method_cases._checks import differs_from_base


def hst_count(am, n) -> int:
    """Meta tokens L·d; stem conv 3×3 (c→w1) + BN + conv 2×2 (w1→w1); downsamplers 3×3 convs + LN;
    bridges d→w_i; per block 3 LNs, attention 4w² + 4w, MLP 8w² + 5w; head BN (no affine) + Linear."""
    cfg, config = am.adapter_config(n), am.base.config
    d, c, layers = config.hidden_size, config.num_channels, config.num_hidden_layers
    dims, per = cfg.dims, config.num_hidden_layers // len(cfg.dims)
    total = layers * d + (9 * c * dims[0] + dims[0]) + 2 * dims[0] + (4 * dims[0] * dims[0] + dims[0])
    total += sum(9 * a * b + b + 2 * b for a, b in zip(dims, dims[1:]))
    total += sum(d * w + w for w in dims)
    total += sum(per * (3 * 2 * w + 4 * w * w + 4 * w + 8 * w * w + 5 * w) for w in dims)
    return total + dims[-1] * config.num_labels + config.num_labels


CASES = {"hst": lambda fam: fam == "vit" and petkit.HstConfig(dims=[8, 16], heads=[2, 2])}
FORMULAS = {"hst": hst_count}
INIT_CHECKS = {"hst": differs_from_base}
