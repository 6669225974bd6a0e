"""Matrix cases of MoRA (petkit/methods/mora.py): rank-1 experts with self-activated top-k routing."""

from __future__ import annotations

from method_cases._shapes import io_features, method_layers
from petkit.methods.mora import MoraConfig

CASES = {
    "mora": lambda fam: MoraConfig(r=4, top_k=2, targets="all-linear"),
    "mora-pruned": lambda fam: MoraConfig(r=6, top_k=3, temperature=0.5, threshold=0.0, targets=["attn.qkv", "mlp.out"]),
}
# A (r × in) + B (out × r) per module, whatever the routing budget
FORMULAS = {"mora": lambda am, n: sum(am.adapter_config(n).r * sum(io_features(b)) for _, b, _ in method_layers(am, n))}
