"""SaRA matrix cases: the smallest |w| by threshold (with the nuclear-norm term on) or by ratio."""

from method_cases._shapes import io_features, method_layers
from petkit.methods.sara import SaraConfig


def sara_count(am, name):
    cfg = am.adapter_config(name)
    total = 0
    for _, b, _ in method_layers(am, name):
        if cfg.ratio:
            i, o = io_features(b)
            total += round(cfg.ratio * i * o)
        else:
            total += int((b.weight.abs() < cfg.threshold).sum())
    return total


CASES = {
    # rank_min_dim=0: every tiny matrix is eligible, so the nuclear-norm gradient runs too
    "sara": lambda fam: SaraConfig(rank_min_dim=0),
    "sara-ratio": lambda fam: SaraConfig(ratio=0.1, rank_weight=0.0, targets=["attn.qkv", "mlp.out"]),
}
FORMULAS = {"sara": sara_count}
