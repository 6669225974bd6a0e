"""Hugging Face PEFT's tuner files (LoRA, DoRA, IA³, MiSS, ...): the layout every tuner type shares.

Layout: `adapter_config.json` + `adapter_model.safetensors`, keys `base_model.model.<module path>.<leaf>`
(`lora_A.weight`, `ia3_l`, `miss_block`, ...). The trained task head goes in as
`base_model.model.<head>.weight` (PEFT's `modules_to_save`). A method whose adapters PEFT holds this
way puts a `TunerFormat` in its registry record, saying only what its type differs in; this module
does the rest for every type (heads, task type, base-weight copies, checks), and imports no method.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from petkit.core.errors import AdapterFileError, BaseModelMismatch, ConfigError
from petkit.core.head import HeadDelta
from petkit.core.load_checks import check_base, check_tensors, copy_tensors
from petkit.core.module_types import Conv1D
from petkit.core.registry import all_methods
from petkit.core.storage import CONFIG_NAME, WEIGHTS_NAME, read_tensors
from petkit.core.unwrapped import base_parameters
from petkit.interop.peft_common import check_heads, fingerprint, head_of, module_names, peft_task_type, short

PREFIX = "base_model.model."

_UNSUPPORTED = {  # PEFT options that change what the adapter computes, with the value that means "off"
    "bias": "none", "lora_bias": False, "layers_to_transform": None, "layer_replication": None,
    "target_parameters": None, "use_qalora": False, "alora_invocation_tokens": None,
    "trainable_token_indices": None, "use_bdlora": None, "arrow_config": None, "kasa_config": None,
    "monteclora_config": None, "velora_config": None,
}


def _no_init(config: dict, file: Path) -> bool:
    return False  # the file holds every tensor: the adapter is added without its init, then filled


@dataclass(frozen=True)
class TunerFormat:
    """How one method's adapters look in PEFT's tuner files (share one object between methods that
    PEFT holds under one type, as LoRA and DoRA share LORA).

    leaves: the tensor names after the module path that this type writes.
    export_layer(delta, layer, path) -> {leaf: tensor}: one adapted module's tensors.
    export_config(config, layers, common) -> dict: adapter_config.json, `common` plus the type's own
        fields; layers are (path, layer, delta) of the adapted modules (the task head left out).
    import_config(peft_config, adapter, train_head, file) -> petkit config; adapter is {module path:
        {leaf: tensor}}. A ConfigError it raises is reported as the file's.
    import_layer(delta, theirs) -> {delta's state_dict key: tensor}: one module's tensors, renamed.
    load_init(peft_config, file) -> bool: whether adding the adapter runs its init, because the file
        leaves out tensors the init recomputes (`recomputed`); raises for inits petkit cannot redo.
    twin: (PEFT config class, the exported fields it takes), for `petkit bench --against peft`.
    """

    peft_type: str
    leaves: tuple[str, ...]
    export_layer: Callable
    export_config: Callable
    import_config: Callable
    import_layer: Callable
    load_init: Callable = _no_init
    recomputed: tuple[str, ...] = ()
    twin: tuple[str, tuple[str, ...]] | None = None
    reads: bool = True  # False: files of this type are read back by another method's format

    def export(self, am, name: str) -> tuple[dict, dict]:
        tensors: dict[str, torch.Tensor] = {}
        heads, layers = [], []
        for path, layer, delta in am.layers(name):
            if isinstance(delta, HeadDelta):
                heads.append(path)
                tensors.update({f"{PREFIX}{path}.{k}": v for k, v in delta.module.state_dict().items()})
                continue
            layers.append((path, layer, delta))
            tensors.update({f"{PREFIX}{path}.{k}": v for k, v in self.export_layer(delta, layer, path).items()})
        common = {"task_type": peft_task_type(am, heads), "target_modules": [p for p, _, _ in layers],
                  "modules_to_save": heads or None, "base_model_name_or_path": None, "inference_mode": True,
                  "revision": None}
        return self.export_config(am.adapter_config(name), layers, common), tensors

    def load(self, am, folder: Path, config: dict, name: str, force: bool) -> None:
        file = folder / WEIGHTS_NAME
        for key, off in _UNSUPPORTED.items():
            if config.get(key, off) not in (off, [], {}, False, None):
                raise AdapterFileError(f"this PEFT adapter uses {key}={short(config[key])}, which petkit does not support")
        init = self.load_init(config, file)
        tensors, metadata = read_tensors(file)
        saved_base = fingerprint(metadata, file)
        head_names = module_names(config.get("modules_to_save"))
        adapter, heads, base_copies = _sort_tensors(tensors, head_names, file)
        if not adapter:
            raise AdapterFileError(f"{file} holds no adapter tensors")
        train_head = check_heads(am, heads, head_names, file)
        try:
            cfg = self.import_config(config, adapter, train_head, folder / CONFIG_NAME)
        except ConfigError as exc:
            raise AdapterFileError(f"{folder / CONFIG_NAME}: {exc}") from None
        am.add(cfg, name, init=init)
        expected, saved = {}, {}
        for path, _, delta in am.layers(name):
            if isinstance(delta, HeadDelta):
                theirs = {f"module.{k}": v for k, v in heads.get(path, {}).items()}
            else:
                theirs = self.import_layer(delta, adapter.get(path, {}))
            saved.update({f"{path}.{k}": v for k, v in theirs.items()})
            expected.update({f"{path}.{k}": v for k, v in delta.state_dict(keep_vars=True).items()
                             if k not in self.recomputed})
        check_tensors(expected, saved, str(folder))
        check_base(am, saved_base, force, folder)
        _check_base_copies(am, base_copies, force, file)
        copy_tensors(expected, saved)


def fan_in_fan_out(layers) -> bool:
    """PEFT's flag for weights stored (in, out), as GPT-2's Conv1D keeps them."""
    return any(bool(Conv1D) and isinstance(layer.base_layer, Conv1D) for _, layer, _ in layers)


def literal(path: str) -> str:
    return "re:" + re.escape(path)  # a petkit target matching exactly this module path


def peft_pattern(patterns: dict, path: str, default, file: Path):
    """PEFT's rank/alpha pattern lookup: the first key k with re.match(rf"(.*\\.)?({k})$", path)."""
    for key, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({key})$", path):
                return value
        except re.error:
            raise AdapterFileError(f"{file}: pattern {short(key)} is not a valid regex") from None
    return default


def _leaves() -> tuple[str, ...]:
    """Every leaf any registered tuner type writes: a key ending in one is an adapter tensor."""
    return tuple(dict.fromkeys(leaf for m in all_methods() if isinstance(m.peft, TunerFormat)
                               for leaf in m.peft.leaves))


def _sort_tensors(tensors: dict, head_names: list[str], file: Path):
    """Split PEFT keys into {module: {leaf: tensor}} for adapter tensors and heads, and base-weight copies."""
    adapter: dict[str, dict] = {}
    heads: dict[str, dict] = {}
    base_copies: dict[str, torch.Tensor] = {}
    leaves = _leaves()
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            raise AdapterFileError(f"{file}: key {short(key)} does not start with {PREFIX!r}")
        rest = key[len(PREFIX):]
        leaf = next((l for l in leaves if rest.endswith("." + l)), None)
        head = head_of(rest, head_names)
        if leaf:
            adapter.setdefault(rest[: -len(leaf) - 1], {})[leaf] = value
        elif head:
            heads.setdefault(head, {})[rest[len(head) + 1:]] = value
        else:  # PEFT saves base embedding layers when asked to (e.g. after resizing the vocabulary)
            base_copies[rest] = value
    return adapter, heads, base_copies


def _check_base_copies(am, copies: dict, force: bool, file: Path) -> None:
    """Base weights saved in the file must be this model's own: petkit never replaces base weights."""
    params = base_parameters(am.base)
    for key, value in copies.items():
        p = params.get(key.replace(".base_layer.", "."))
        if p is None:
            raise AdapterFileError(f"{file}: tensor {short(key)} is neither an adapter tensor nor a weight of this model")
        if tuple(value.shape) != tuple(p.shape):
            raise AdapterFileError(f"{file}: shape mismatch for {key!r}: file has {tuple(value.shape)}, model has "
                                   f"{tuple(p.shape)} (was the vocabulary resized?)")
        same = torch.allclose(value.float(), p.detach().float(), rtol=1e-3, atol=1e-5)
        if not same and not force:
            raise BaseModelMismatch(f"{file} holds its own {key!r} that differs from this model's (a resized or trained "
                                    "embedding?), and petkit never replaces base weights; pass force=True to ignore it")
