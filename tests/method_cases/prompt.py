"""Matrix cases of prompt tuning: soft tokens in front of the input (ViT: after [CLS])."""

from __future__ import annotations

import torch

import petkit


def prompt_width(am) -> int:
    table = am.base.get_input_embeddings()
    return table.embedding_dim if isinstance(table, torch.nn.Embedding) else am.base.config.hidden_size


def reads_more_tokens(y_adapted, y_base):
    """Not identity at init: same output shape (prompt positions cut off), different values."""
    assert y_adapted.shape == y_base.shape
    assert not torch.allclose(y_adapted, y_base, atol=1e-6)


CASES = {
    "prompt": lambda fam: petkit.PromptTuningConfig(num_virtual_tokens=3),
    "prompt-random-init": lambda fam: fam != "vit" and petkit.PromptTuningConfig(num_virtual_tokens=2, init="random"),
}
FORMULAS = {"prompt": lambda am, n: am.config(n).num_virtual_tokens * prompt_width(am)}
INIT_CHECKS = {"prompt": reads_more_tokens, "prompt-random-init": reads_more_tokens}
