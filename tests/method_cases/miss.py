"""Matrix cases of MiSS (Bone): the default shard-sharing block, with padding, and the bat and mini variants."""

from __future__ import annotations

from method_cases._shapes import io_features, method_layers
from petkit.methods import miss


def miss_count(am, name):
    cfg = am.adapter_config(name)
    per_layer = (lambda b: cfg.r * cfg.mini_r) if cfg.variant == "mini" else (lambda b: cfg.r * io_features(b)[1])
    return sum(per_layer(b) for _, b, _ in method_layers(am, name))


CASES = {
    "miss": lambda fam: miss.MissConfig(r=4, targets="all-linear"),
    # 32 and 64 inputs are not multiples of 6: the last shard is zero-padded
    "miss-padded-dropout": lambda fam: miss.MissConfig(r=6, dropout=0.1, targets=["attn.out", "mlp.out"]),
    "miss-bat": lambda fam: miss.MissConfig(r=4, variant="bat", targets="all-linear"),
    "miss-mini": lambda fam: miss.MissConfig(r=4, variant="mini", mini_r=8, targets=["attn.qkv", "mlp.in"]),
}
FORMULAS = {"miss": miss_count}
