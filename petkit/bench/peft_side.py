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
from petkit.core.registry import all_methods, method_for
from petkit.core.storage import CONFIG_NAME, WEIGHTS_NAME


def peft_model(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """`peft.get_peft_model(model, <config petkit exports for config>)` with petkit's initial weights."""
    import peft

    fmt = method_for(config).peft
    twin = fmt.twin if fmt is not None else None
    if twin is None:
        raise ConfigError(f"{config.method} has no Hugging Face PEFT counterpart here; those are "
                          f"{', '.join(m.name for m in all_methods() if m.peft and m.peft.twin)}")
    # The petkit twin's starting point, exported, then removed again: `delete` unwraps every module,
    # leaving `model` as it was (no copy of the model, which would blur the memory measurement).
    mirror = adapt(model, config)
    with tempfile.TemporaryDirectory() as tmp:
        mirror.save(tmp, format="peft")
        exported = json.loads((Path(tmp) / CONFIG_NAME).read_text())
        weights = load_file(str(Path(tmp) / WEIGHTS_NAME))
    mirror.delete("default")

    peft_config = _peft_config(peft, twin, exported)
    pm = peft.get_peft_model(model, peft_config)
    result = peft.set_peft_model_state_dict(pm, weights)
    if "prompt_embeddings" in weights:  # loaded by PEFT apart from the state dict, which lists it as unexpected
        if not torch.equal(pm.prompt_encoder["default"].embedding.weight.detach(), weights["prompt_embeddings"]):
            raise RuntimeError("PEFT did not take petkit's initial prompt")
        result.unexpected_keys.remove("prompt_embeddings")
    if result.unexpected_keys:
        raise RuntimeError(f"PEFT did not take petkit's initial weights {result.unexpected_keys[:3]}")
    return pm


def _peft_config(peft, twin: tuple, exported: dict):
    """The PEFT config object for what petkit exported (the fields the method's twin names, training mode)."""
    cls, fields = twin
    return getattr(peft, cls)(**{k: exported[k] for k in fields}, modules_to_save=exported["modules_to_save"],
                              task_type=exported["task_type"], inference_mode=False)
