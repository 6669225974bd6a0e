"""Matrix cases of the bottleneck adapters: Houlsby, Pfeiffer, parallel and scaled parallel."""

from __future__ import annotations

from method_cases._shapes import io_features, method_layers
from petkit.methods.adapters import BottleneckConfig


def bottleneck_count(am, name):
    """(d·m + m) + (m·d + d) per wrapped module, d its output width (= the block input width in these
    models), m the bottleneck size or d // reduction_factor."""
    cfg = am.adapter_config(name)
    total = 0
    for _, base, _ in method_layers(am, name):
        d = io_features(base)[1]
        m = cfg.bottleneck or int(d // cfg.reduction_factor)
        total += (d * m + m) + (m * d + d)
    return total


CASES = {
    "adapter-houlsby": lambda fam: BottleneckConfig(variant="houlsby", bottleneck=8),
    "adapter-pfeiffer": lambda fam: BottleneckConfig(variant="pfeiffer", reduction_factor=4, activation="gelu"),
    "adapter-parallel": lambda fam: BottleneckConfig(variant="parallel", bottleneck=8, init="lora",
                                                     targets=["attn.out", "mlp.out"]),
    "adapter-scaled-parallel": lambda fam: BottleneckConfig(variant="scaled_parallel", bottleneck=4, activation="silu"),
}
FORMULAS = {"bottleneck": bottleneck_count}
