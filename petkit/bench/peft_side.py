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

from safetensors.torch import load_file
from torch import nn

import petkit
from petkit.core.storage import CONFIG_NAME, WEIGHTS_NAME
from petkit.interop.peft import EXPORTABLE

LORA_FIELDS = ("r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora", "rank_pattern", "alpha_pattern")


def peft_model(model: nn.Module, config: petkit.AdapterConfig) -> nn.Module:
    """`peft.get_peft_model(model, <config petkit exports for config>)` with petkit's initial weights."""
    import peft

    if config.method not in EXPORTABLE:
        raise petkit.ConfigError(f"{config.method} has no Hugging Face PEFT counterpart; "
                                 f"those are {', '.join(EXPORTABLE)}")
    # The petkit twin's starting point, exported, then removed again: `delete` unwraps every module,
    # leaving `model` as it was (no copy of the model, which would blur the memory measurement).
    mirror = petkit.adapt(model, config)
    with tempfile.TemporaryDirectory() as tmp:
        mirror.save(tmp, format="peft")
        exported = json.loads((Path(tmp) / CONFIG_NAME).read_text())
        weights = load_file(str(Path(tmp) / WEIGHTS_NAME))
    mirror.delete("default")

    common = {"target_modules": exported["target_modules"], "modules_to_save": exported["modules_to_save"],
              "task_type": exported["task_type"], "inference_mode": False}
    if exported["peft_type"] == "IA3":
        peft_config = peft.IA3Config(feedforward_modules=exported["feedforward_modules"], **common)
    else:
        peft_config = peft.LoraConfig(**{k: exported[k] for k in LORA_FIELDS}, **common)
    pm = peft.get_peft_model(model, peft_config)
    result = peft.set_peft_model_state_dict(pm, weights)
    if result.unexpected_keys:
        raise RuntimeError(f"PEFT did not take petkit's initial weights {result.unexpected_keys[:3]}")
    return pm
