"""DSEE matrix cases: LoRA + sparse support from the GreBsmo decomposition, |W| (omp) or random."""

from method_cases._shapes import io_features, method_layers
from petkit.methods.dsee import DseeConfig


def _nnz(cfg, n_in, n_out):
    return cfg.nnz if isinstance(cfg.nnz, int) else max(1, round(cfg.nnz * n_in * n_out))


def dsee_count(am, name):
    cfg = am.adapter_config(name)
    return sum(cfg.r * (i + o) + _nnz(cfg, i, o) for _, b, _ in method_layers(am, name) for i, o in [io_features(b)])


CASES = {
    # default targets (attn.q, attn.v; on GPT-2 its fused c_attn)
    "dsee": lambda fam: DseeConfig(r=2, alpha=4, nnz=8),
    "dsee-omp-fraction": lambda fam: DseeConfig(r=2, alpha=4, nnz=0.05, support="omp", targets=["attn.out", "mlp.in"]),
    "dsee-random-dropout": lambda fam: DseeConfig(r=3, alpha=3, nnz=5, support="random", dropout=0.1, seed=3,
                                                  targets=["mlp.out"]),
}
FORMULAS = {"dsee": dsee_count}
