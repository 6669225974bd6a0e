"""Matrix cases of APT: approximated prompts added to every self-attention output."""

from __future__ import annotations

import petkit
from method_cases._checks import differs_from_base


def apt_count(am, n) -> int:
    """Per self-attention layer m·d + 2·d·k + 1."""
    cfg, delta = am.adapter_config(n), am.model_deltas[n]
    d = delta.prompts.shape[-1]
    return len(delta.ends) * (cfg.num_virtual_tokens * d + 2 * d * cfg.key_rank + 1)


CASES = {"apt": lambda fam: petkit.AptConfig(num_virtual_tokens=4, key_rank=2)}
FORMULAS = {"apt": apt_count}
INIT_CHECKS = {"apt": differs_from_base}
