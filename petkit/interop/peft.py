"""Hugging Face PEFT's on-disk format, through the method registry.

A method's record holds its PEFT format (`Method.peft`): a `TunerFormat` for tuner files such as
LoRA's (peft_tuner.py), a `PromptFormat` for prompt learning (peft_prompt.py), or None when PEFT's
files cannot hold its adapters. Saving writes each adapter with its method's format, non-default
adapters in a subfolder named after them; loading picks the one format that reads the file's
`peft_type`. petkit adds its base-model fingerprint to the safetensors metadata, which PEFT ignores.

A format is any object with `peft_type`, `reads`, `twin`, `export(am, name) -> (adapter_config,
tensors)` and `load(am, folder, adapter_config, name, force)`; the two classes cover PEFT's layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

from petkit.core.errors import AdapterFileError, ConfigError
from petkit.core.registry import all_methods
from petkit.core.storage import CONFIG_NAME, WEIGHTS_NAME, write_files
from petkit.interop.peft_common import short


def exportable() -> tuple[str, ...]:
    """The methods whose adapters format='peft' writes."""
    return tuple(m.name for m in all_methods() if m.peft is not None)


def save_peft(am, folder: Path, names: list[str]) -> None:
    for n in names:
        method = am.method_of(n)
        if method.peft is None:
            raise ConfigError(f"format='peft' holds {', '.join(exportable())} adapters; {n!r} is {method.name}: "
                              "save it with format='petkit'")
    files = {}
    for n in names:
        sub = "" if n == "default" else f"{n}/"
        config, tensors = am.method_of(n).peft.export(am, n)
        meta = {"format": "pt", "petkit_base": json.dumps(am.base_fingerprint)}
        files[sub + WEIGHTS_NAME] = (tensors, meta)
        files[sub + CONFIG_NAME] = config
    write_files(folder, files)  # all adapters or none: a failed save leaves the old folder as it was


def reader(peft_type):
    """The format that reads PEFT files of `peft_type`: exactly one registered method's."""
    formats = {id(m.peft): m.peft for m in all_methods() if m.peft is not None and m.peft.reads}
    found = [f for f in formats.values() if f.peft_type == peft_type]
    if not found:
        known = sorted({f.peft_type for f in formats.values()})
        raise AdapterFileError(f"PEFT adapters of type {short(peft_type)} are not supported yet; petkit reads "
                               f"{', '.join(known)}")
    if len(found) > 1:
        owners = [m.name for m in all_methods() if any(m.peft is f for f in found)]
        raise ConfigError(f"methods {', '.join(owners)} each read PEFT's {peft_type} files; all but one must "
                          "set reads=False in their format")
    return found[0]


def load_peft(am, folder: Path, config: dict, name: str, force: bool) -> None:
    reader(config.get("peft_type")).load(am, folder, config, name, force)
