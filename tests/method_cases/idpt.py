"""Matrix cases of IDPT instance-aware prompts (encoders): the paper's EdgeConv generator and head, and
petkit's first stand-in (a token-wise MLP generator, the model's own head)."""

from __future__ import annotations

import petkit
from method_cases._checks import differs_from_base


def idpt_count(am, n) -> int:
    """edgeconv: 3 EdgeConv (2·c_in·h, no bias, + BN 2h) + fuse 3h·md (no bias) + BN 2md; mlp: LN 2d
    + d·h + h + h·m·d + m·d. Both: prompt positions m·d. head idpt: (2+m)d → c → c → labels, each
    hidden Linear with a BN (2c)."""
    cfg = am.adapter_config(n)
    d = am.base.config.hidden_size
    h, m = cfg.generator_hidden or d, cfg.num_virtual_tokens
    if cfg.generator == "edgeconv":
        total = 2 * d * h + 2 * (2 * h * h) + 3 * 2 * h + 3 * h * m * d + 2 * m * d
    else:
        total = 2 * d + d * h + h + h * m * d + m * d
    total += m * d
    if cfg.head == "idpt":
        c, labels = cfg.head_hidden, am.base.config.num_labels
        total += (2 + m) * d * c + c + 2 * c + c * c + c + 2 * c + c * labels + labels
    return total


ENCODERS = ("bert", "vit")
CASES = {
    "idpt": lambda fam: fam in ENCODERS and petkit.IdptConfig(),
    "idpt-two-late-layers": lambda fam: fam in ENCODERS and petkit.IdptConfig(
        num_virtual_tokens=2, late_layers=2, generator_hidden=8, neighbors=3, head_hidden=16),
    "idpt-mlp-own-head": lambda fam: fam in ENCODERS and petkit.IdptConfig(generator="mlp", head="model"),
}
FORMULAS = {"idpt": idpt_count}
INIT_CHECKS = dict.fromkeys(CASES, differs_from_base)
