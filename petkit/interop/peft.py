"""Hugging Face PEFT's on-disk format for LoRA, DoRA, IA³ and MiSS adapters (prompt and prefix tuning: peft_prompt.py).

Layout: `adapter_config.json` + `adapter_model.safetensors` per adapter (non-default adapters in a
subfolder named after them), keys `base_model.model.<module path>.lora_A.weight` (`.ia3_l`,
`.miss_block`) etc. The trained task head goes in as `base_model.model.<head>.weight` (PEFT's
`modules_to_save`). petkit adds its base-model fingerprint to the safetensors metadata, which PEFT
ignores.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from petkit.core.errors import AdapterFileError, BaseModelMismatch, ConfigError
from petkit.core.head import HeadDelta
from petkit.core.load_checks import check_base, check_tensors, copy_tensors
from petkit.core.module_types import Conv1D
from petkit.core.storage import CONFIG_NAME, WEIGHTS_NAME, read_tensors, write_files
from petkit.core.unwrapped import base_parameters
from petkit.interop.peft_common import check_heads, head_of, module_names, peft_task_type, short
from petkit.interop.peft_prompt import export_prompt, load_prompt
from petkit.methods.ia3 import IA3Config, IA3Delta
from petkit.methods.lora import DoraConfig, DoraDelta, LoraConfig
from petkit.methods.miss import MissConfig, MissDelta

PREFIX = "base_model.model."
EXPORTABLE = ("lora", "dora", "ia3", "miss", "prompt", "prefix", "deep_prompt")
MISS_INITS = {"miss": True, "bat": "bat", "mini": "mini"}  # petkit variant -> PEFT's init_weights


# -- export ----------------------------------------------------------------------------------------

def save_peft(am, folder: Path, names: list[str]) -> None:
    for n in names:
        method = am.method_of(n).name
        if method not in EXPORTABLE:
            raise ConfigError(f"format='peft' holds {', '.join(EXPORTABLE)} adapters; {n!r} is {method}: save it with format='petkit'")
    files = {}
    for n in names:
        sub = "" if n == "default" else f"{n}/"
        if am.method_of(n).name in ("prompt", "prefix", "deep_prompt"):
            config, tensors = export_prompt(am, n)
        else:
            config, tensors = _export_one(am, n)
        meta = {"format": "pt", "petkit_base": json.dumps(am.base_fingerprint)}
        files[sub + WEIGHTS_NAME] = (tensors, meta)
        files[sub + CONFIG_NAME] = config
    write_files(folder, files)  # all adapters or none: a failed save leaves the old folder as it was


def _export_one(am, name: str):
    cfg = am.config(name)
    tensors: dict[str, torch.Tensor] = {}
    heads, targets, ranks, alphas, feedforward = [], [], {}, {}, []
    fan_in_fan_out = False
    for path, layer, delta in am.layers(name):
        key = PREFIX + path
        if isinstance(delta, HeadDelta):
            heads.append(path)
            for k, v in delta.module.state_dict().items():
                tensors[f"{key}.{k}"] = v
            continue
        targets.append(path)
        fan_in_fan_out |= bool(Conv1D) and isinstance(layer.base_layer, Conv1D)
        if isinstance(delta, MissDelta):
            if not isinstance(layer.base_layer, nn.Linear):
                raise ConfigError(f"PEFT's MiSS adapts nn.Linear layers only, and {path!r} is a "
                                  f"{type(layer.base_layer).__name__}; save this adapter with format='petkit'")
            tensors[f"{key}.miss_block"] = delta.block.detach()
            continue
        if isinstance(delta, IA3Delta):
            l = delta.scale.detach()
            tensors[f"{key}.ia3_l"] = l[None, :] if delta.feedforward else l[:, None]
            if delta.feedforward:
                feedforward.append(path)
            continue
        A, B = delta.A.detach(), delta.B.detach()
        r, scale = delta.r, delta.scale
        if delta.pissa:  # ΔW = s(BA − B0A0) is exactly a rank-2r LoRA [B, −B0][A; A0] with the same s
            A, B, r = torch.cat([A, delta.A0]), torch.cat([B, -delta.B0], dim=1), 2 * r
        if isinstance(layer.base_layer, nn.Embedding):
            tensors[f"{key}.lora_embedding_A"], tensors[f"{key}.lora_embedding_B"] = A, B
        else:
            tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = A, B
        if isinstance(delta, DoraDelta):
            tensors[f"{key}.lora_magnitude_vector"] = delta.magnitude.detach()
        ranks[path] = r
        alphas[path] = scale * (math.sqrt(r) if cfg.rslora else r)
    common = {"task_type": peft_task_type(am, heads), "target_modules": targets, "modules_to_save": heads or None,
              "base_model_name_or_path": None, "inference_mode": True, "revision": None}
    if isinstance(cfg, MissConfig):
        return {**common, "peft_type": "MISS", "r": cfg.r, "miss_dropout": cfg.dropout, "mini_r": cfg.mini_r,
                "init_weights": MISS_INITS[cfg.variant], "bias": "none"}, tensors
    common.update(peft_type="IA3" if isinstance(cfg, IA3Config) else "LORA", fan_in_fan_out=fan_in_fan_out)
    if isinstance(cfg, IA3Config):
        return {**common, "feedforward_modules": feedforward, "init_ia3_weights": True}, tensors
    r0 = max(set(ranks.values()), key=list(ranks.values()).count) if ranks else cfg.r
    a0 = max(set(alphas.values()), key=list(alphas.values()).count) if alphas else cfg.alpha
    config = {**common, "r": r0, "lora_alpha": a0, "lora_dropout": cfg.dropout, "use_rslora": cfg.rslora,
              "use_dora": isinstance(cfg, DoraConfig), "init_lora_weights": True, "bias": "none",
              "rank_pattern": {_anchored(p): v for p, v in ranks.items() if v != r0},
              "alpha_pattern": {_anchored(p): v for p, v in alphas.items() if v != a0}}
    return config, tensors


def _anchored(path: str) -> str:
    # PEFT matches pattern keys with re.match(rf"(.*\.)?({key})$", name): an anchored full path.
    return "^" + re.escape(path)


# -- import ----------------------------------------------------------------------------------------

_UNSUPPORTED = {  # PEFT options that change what the adapter computes, with the value that means "off"
    "bias": "none", "lora_bias": False, "layers_to_transform": None, "layer_replication": None,
    "target_parameters": None, "use_qalora": False, "alora_invocation_tokens": None,
    "trainable_token_indices": None, "use_bdlora": None, "arrow_config": None, "kasa_config": None,
    "monteclora_config": None, "velora_config": None,
}
# Inits that leave the base weights alone. PEFT rewrites the base for the others, so such a file only
# fits that rewritten base; "pissa" is deterministic and petkit redoes it (as PEFT does on loading).
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
_LEAVES = ("lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "ia3_l",
           "miss_block")


def load_peft(am, folder: Path, config: dict, name: str, force: bool) -> None:
    file = folder / WEIGHTS_NAME
    peft_type = config.get("peft_type")
    if peft_type in ("PROMPT_TUNING", "PREFIX_TUNING"):
        expected, saved, metadata = load_prompt(am, folder, config, name)
        check_tensors(expected, saved, str(folder))
        check_base(am, _fingerprint(metadata, file), force, folder)
        copy_tensors(expected, saved)
        return
    if peft_type not in ("LORA", "IA3", "MISS"):
        raise AdapterFileError(f"PEFT adapters of type {short(peft_type)} are not supported yet; "
                               "petkit reads LORA (incl. DoRA), IA3, MISS, PROMPT_TUNING and PREFIX_TUNING")
    for key, off in _UNSUPPORTED.items():
        if config.get(key, off) not in (off, [], {}, False, None):
            raise AdapterFileError(f"this PEFT adapter uses {key}={short(config[key])}, which petkit does not support")
    init = config.get("init_lora_weights", True) if peft_type == "LORA" else True
    if init not in _PLAIN_INITS + ("pissa",):
        raise AdapterFileError(f"this PEFT adapter was initialised with init_lora_weights={short(init)}, which rewrites the "
                               "base weights; save it in PEFT with path_initial_model_for_weight_conversion to get a plain LoRA")
    tensors, metadata = read_tensors(file)
    fingerprint = _fingerprint(metadata, file)
    adapter, heads, base_copies = _sort_tensors(tensors, module_names(config.get("modules_to_save")), file)
    if not adapter:
        raise AdapterFileError(f"{file} holds no adapter tensors")
    train_head = check_heads(am, heads, module_names(config.get("modules_to_save")), file)
    cfg = _petkit_config(config, peft_type, adapter, train_head, folder)
    am.add(cfg, name, init=init == "pissa")  # PiSSA: recompute the initial factors from the base
    expected, saved = {}, {}
    for path, layer, delta in am.layers(name):
        for k, v in _to_petkit(delta, heads.get(path, {}) if isinstance(delta, HeadDelta) else adapter.get(path, {})).items():
            saved[f"{path}.{k}"] = v
        for k, v in delta.state_dict(keep_vars=True).items():
            if k not in ("A0", "B0"):  # PiSSA's initial factors are recomputed, not stored
                expected[f"{path}.{k}"] = v
    check_tensors(expected, saved, str(folder))
    check_base(am, fingerprint, force, folder)
    _check_base_copies(am, base_copies, force, file)
    copy_tensors(expected, saved)


def _fingerprint(metadata: dict, file: Path):
    """The base-model fingerprint petkit wrote into the safetensors metadata (None in PEFT's own files)."""
    if "petkit_base" not in metadata:
        return None
    try:
        return json.loads(metadata["petkit_base"])
    except (ValueError, RecursionError):
        raise AdapterFileError(f"{file}: the petkit_base metadata is corrupt") from None


def _sort_tensors(tensors: dict, head_names: list[str], file: Path):
    """Split PEFT keys into {module: {leaf: tensor}} for adapter tensors and heads, and base-weight copies."""
    adapter: dict[str, dict] = {}
    heads: dict[str, dict] = {}
    base_copies: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            raise AdapterFileError(f"{file}: key {short(key)} does not start with {PREFIX!r}")
        rest = key[len(PREFIX):]
        leaf = next((l for l in _LEAVES if rest.endswith("." + l)), None)
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


def _peft_pattern(patterns: dict, path: str, default, file: Path):
    """PEFT's rank/alpha pattern lookup: the first key k with re.match(rf"(.*\\.)?({k})$", path)."""
    for key, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({key})$", path):
                return value
        except re.error:
            raise AdapterFileError(f"{file.parent / CONFIG_NAME}: pattern {short(key)} is not a valid regex") from None
    return default


def _literal(path: str) -> str:
    return "re:" + re.escape(path)  # a petkit target matching exactly this module path


def _petkit_config(config: dict, peft_type: str, adapter: dict, head, folder: Path):
    file = folder / CONFIG_NAME
    targets = list(adapter)
    try:
        if peft_type == "IA3":
            ff = config.get("feedforward_modules")
            if isinstance(ff, str):  # PEFT: a string is a regex (full match), a list holds plain suffixes
                is_ff = lambda p: re.fullmatch(ff, p) is not None  # noqa: E731
            else:
                is_ff = lambda p: any(p.endswith(k) for k in module_names(ff))  # noqa: E731
            try:
                feedforward = [_literal(p) for p in targets if is_ff(p)]
            except re.error:
                raise AdapterFileError(f"{file}: feedforward_modules {short(ff)} is not a valid regex") from None
            return IA3Config(targets=[_literal(p) for p in targets], feedforward=feedforward, train_head=head)
        if peft_type == "MISS":
            return _miss_config(config, targets, head, file)
        ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
        if not isinstance(ranks, dict) or not isinstance(alphas, dict):
            raise ConfigError("rank_pattern and alpha_pattern must be JSON objects")
        r0, a0 = config.get("r", 8), config.get("lora_alpha", 8)
        rank_pattern, alpha_pattern = {}, {}
        for path, theirs in adapter.items():
            r = _peft_pattern(ranks, path, r0, folder)
            alpha = _peft_pattern(alphas, path, a0, folder)
            # The rank in the tensors must be the config's: checked before anything of that size is allocated.
            dims = {t.shape[0] for k, t in theirs.items() if k in ("lora_A.weight", "lora_embedding_A") and t.ndim}
            dims |= {t.shape[1] for k, t in theirs.items() if k in ("lora_B.weight", "lora_embedding_B") and t.ndim > 1}
            if not dims:
                raise AdapterFileError(f"{folder / WEIGHTS_NAME}: {path!r} has no lora_A/lora_B tensors")
            if not (isinstance(r, int) and dims == {r}):
                raise AdapterFileError(f"{folder / WEIGHTS_NAME}: the tensors of {path!r} have rank "
                                       f"{', '.join(map(str, sorted(dims)))}, the config says r={short(r)}")
            if r != r0:
                rank_pattern[_literal(path)] = r
            if alpha != a0:
                alpha_pattern[_literal(path)] = alpha
        cls = DoraConfig if config.get("use_dora") else LoraConfig
        return cls(targets=[_literal(p) for p in targets], r=r0, alpha=a0, dropout=config.get("lora_dropout", 0.0) or 0.0,
                   rslora=bool(config.get("use_rslora", False)), init="pissa" if config.get("init_lora_weights") == "pissa" else "kaiming",
                   rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, train_head=head)
    except ConfigError as exc:
        raise AdapterFileError(f"{file}: {exc}") from None


def _miss_config(config: dict, targets: list[str], head, file: Path) -> MissConfig:
    init = config.get("init_weights", True)
    if init not in (True, False, "bat", "mini") or not isinstance(init, (bool, str)):
        raise AdapterFileError(f"{file}: MiSS init_weights={short(init)} is unknown; petkit reads true, false, 'bat' and 'mini'")
    variant = init if isinstance(init, str) else "miss"  # False: PEFT's random init for its tests, same forward
    return MissConfig(targets=[_literal(p) for p in targets], r=config.get("r", 64), variant=variant,
                      mini_r=config.get("mini_r", 1) if variant == "mini" else 1,
                      dropout=0.0 if variant == "bat" else config.get("miss_dropout", 0.0) or 0.0, train_head=head)


def _to_petkit(delta, theirs: dict) -> dict[str, torch.Tensor]:
    if isinstance(delta, HeadDelta):
        return {f"module.{k}": v for k, v in theirs.items()}
    if isinstance(delta, MissDelta):
        return {"block": theirs["miss_block"]} if "miss_block" in theirs else {}
    if isinstance(delta, IA3Delta):
        if "ia3_l" not in theirs:
            return {}
        l, n = theirs["ia3_l"], delta.scale.numel()
        # PEFT stores (1, in) for feed-forward layers and (out, 1) otherwise; the wrong one is a mismatch
        return {"scale": l.reshape(-1) if tuple(l.shape) == ((1, n) if delta.feedforward else (n, 1)) else l}
    out = {}
    for src, dst in (("lora_A.weight", "A"), ("lora_B.weight", "B"), ("lora_embedding_A", "A"),
                     ("lora_embedding_B", "B"), ("lora_magnitude_vector", "magnitude")):
        if src in theirs:
            out[dst] = theirs[src]
    return out
