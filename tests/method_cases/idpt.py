"""Matrix cases of IDPT-style instance-aware prompts (encoders)."""

from __future__ import annotations

import petkit
from method_cases._checks import differs_from_base


def idpt_count(am, n) -> int:
    """LN (2d) + d·h + h + h·m·d + m·d (generator) + m·d (prompt positions)."""
    cfg = am.config(n)
    d = am.base.config.hidden_size
    h, m = cfg.generator_hidden or d, cfg.num_virtual_tokens
    return 2 * d + d * h + h + h * m * d + m * d + m * d


CASES = {
    "idpt": lambda fam: fam in ("bert", "vit") and petkit.IdptConfig(),
    "idpt-two-late-layers": lambda fam: fam in ("bert", "vit") and petkit.IdptConfig(
        num_virtual_tokens=2, late_layers=2, generator_hidden=8),
}
FORMULAS = {"idpt": idpt_count}
INIT_CHECKS = {"idpt": differs_from_base, "idpt-two-late-layers": differs_from_base}
