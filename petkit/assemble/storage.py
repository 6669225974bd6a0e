"""One incubated module on disk, so each incubation can run as its own job and the assembling job
collects them.

A folder holds `module.json` ({"format": "petkit-assembled-module", "version": 1, "index": k,
"num_modules": K, "depth": blocks in the module, "hidden_size"}), `module.safetensors` (the module's
tensors under module-local names, see modules.Split.relative) and the target's `config.json`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from petkit.core.errors import AdapterFileError
from petkit.core.storage import read_tensors, write_files
from petkit.models.rebuild import config_record, read_description
from petkit.models.structure import hidden_size

from .modules import load_module_state, split_model

DESCRIPTION, WEIGHTS = "module.json", "module.safetensors"
FORMAT, VERSION = "petkit-assembled-module", 1


def save_module(folder, state: dict[str, torch.Tensor], k: int, num_modules: int, target: nn.Module) -> None:
    """Write module k (its tensors from modules.module_state) with the target it belongs to described."""
    split = split_model(target, num_modules)
    spec = {"format": FORMAT, "version": VERSION, "index": k, "num_modules": num_modules,
            "depth": split.depths[k], "hidden_size": hidden_size(target.config)}
    files = {DESCRIPTION: spec, WEIGHTS: (state, {"format": "pt"})}
    if (config := config_record(target)) is not None:
        files["config.json"] = config
    write_files(Path(folder), files)


def load_module(folder, target: nn.Module, k: int | None = None) -> int:
    """Put the module saved in `folder` into target (at the index it was saved for, which must equal k when
    given); returns that index. The target is unchanged if the module does not fit."""
    folder = Path(folder)
    spec = read_description(folder / DESCRIPTION, FORMAT, VERSION, "incubated-module")
    index, count = spec.get("index"), spec.get("num_modules")
    if k is not None and index != k:
        raise AdapterFileError(f"{folder} holds module {index}, not module {k}: check the folders' order")
    split = split_model(target, count)
    if spec.get("depth") != split.depths[index]:
        raise AdapterFileError(f"{folder} holds a module of {spec.get('depth')} blocks; module {index} of this target "
                               f"has {split.depths[index]}: assemble it into the target it was incubated for")
    tensors, _ = read_tensors(folder / WEIGHTS)
    load_module_state(target, split, index, tensors)
    return index
