"""The same adapter through Hugging Face PEFT, for `petkit bench --against peft`.

Only the adapter library may differ between a petkit run and its PEFT twin, so the PEFT model is
built from exactly what petkit would write for that adapter in PEFT's format (targets resolved to
full module paths, r, alpha, dropout, DoRA/rsLoRA flags, IA3 feed-forward layers, the task head as
`modules_to_save`) with `peft.get_peft_model`, and starts from petkit's initial adapter weights.
Data, seed, optimiser, schedule and trainer are the bench's own, shared by both.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from petkit.core.config import AdapterConfig
from petkit.core.errors import ConfigError
from petkit.core.model import adapt
from petkit.core.storage import CONFIG_NAME, WEIGHTS_NAME
from petkit.interop.peft import EXPORTABLE

LORA_FIELDS = ("r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora", "rank_pattern", "alpha_pattern")
MISS_FIELDS = ("r", "miss_dropout", "mini_r", "init_weights")
PROMPT_FIELDS = ("num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers")


def peft_model(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """`peft.get_peft_model(model, <config petkit exports for config>)` with petkit's initial weights."""
    import peft

    if config.method not in EXPORTABLE:
        raise ConfigError(f"{config.method} has no Hugging Face PEFT counterpart; "
                                 f"those are {', '.join(EXPORTABLE)}")
    # The petkit twin's starting point, exported, then removed again: `delete` unwraps every module,
    # leaving `model` as it was (no copy of the model, which would blur the memory measurement).
    mirror = adapt(model, config)
    with tempfile.TemporaryDirectory() as tmp:
        mirror.save(tmp, format="peft")
        exported = json.loads((Path(tmp) / CONFIG_NAME).read_text())
        weights = load_file(str(Path(tmp) / WEIGHTS_NAME))
    mirror.delete("default")

    peft_config = _peft_config(peft, exported)
    pm = peft.get_peft_model(model, peft_config)
    result = peft.set_peft_model_state_dict(pm, weights)
    if "prompt_embeddings" in weights:  # loaded by PEFT apart from the state dict, which lists it as unexpected
        if not torch.equal(pm.prompt_encoder["default"].embedding.weight.detach(), weights["prompt_embeddings"]):
            raise RuntimeError("PEFT did not take petkit's initial prompt")
        result.unexpected_keys.remove("prompt_embeddings")
    if result.unexpected_keys:
        raise RuntimeError(f"PEFT did not take petkit's initial weights {result.unexpected_keys[:3]}")
    return pm


def _peft_config(peft, exported: dict):
    """The PEFT config object for what petkit exported (the same fields, training mode)."""
    common = {"modules_to_save": exported["modules_to_save"], "task_type": exported["task_type"], "inference_mode": False}
    kind = exported["peft_type"]
    if kind == "PROMPT_TUNING":
        return peft.PromptTuningConfig(**{k: exported[k] for k in PROMPT_FIELDS}, **common)
    common["target_modules"] = exported["target_modules"]
    if kind == "IA3":
        return peft.IA3Config(feedforward_modules=exported["feedforward_modules"], **common)
    if kind == "MISS":
        return peft.MissConfig(**{k: exported[k] for k in MISS_FIELDS}, **common)
    return peft.LoraConfig(**{k: exported[k] for k in LORA_FIELDS}, **common)
