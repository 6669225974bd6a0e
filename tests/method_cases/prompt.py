"""Matrix cases of prompt tuning: soft tokens in front of the input (ViT: after [CLS])."""

from __future__ import annotations

import torch

import petkit
from method_cases._checks import differs_from_base


def prompt_width(am) -> int:
    table = am.base.get_input_embeddings()
    return table.embedding_dim if isinstance(table, torch.nn.Embedding) else am.base.config.hidden_size


CASES = {
    "prompt": lambda fam: petkit.PromptTuningConfig(num_virtual_tokens=3),
    "prompt-random-init": lambda fam: fam != "vit" and petkit.PromptTuningConfig(num_virtual_tokens=2, init="random"),
}
FORMULAS = {"prompt": lambda am, n: am.adapter_config(n).num_virtual_tokens * prompt_width(am)}
INIT_CHECKS = {"prompt": differs_from_base, "prompt-random-init": differs_from_base}
