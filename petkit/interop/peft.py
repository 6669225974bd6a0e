"""Hugging Face PEFT's on-disk format for LoRA, DoRA and IA³ adapters.

Layout: `adapter_config.json` + `adapter_model.safetensors` per adapter (non-default adapters in a
subfolder named after them), keys `base_model.model.<module path>.lora_A.weight` etc. The trained
task head goes in as `base_model.model.<head>.weight` (PEFT's `modules_to_save`). petkit adds its
base-model fingerprint to the safetensors metadata, which PEFT ignores.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from petkit.core.errors import AdapterFileError, ConfigError
from petkit.core.model import AdaptedModel
from petkit.core.storage import CONFIG_NAME, WEIGHTS_NAME, read_tensors, write_files
from petkit.core.targeting import Conv1D
from petkit.methods.head import HeadDelta
from petkit.methods.ia3 import IA3Config, IA3Delta
from petkit.methods.lora import DoraConfig, DoraDelta, LoraConfig, LoraDelta

PREFIX = "base_model.model."
EXPORTABLE = ("lora", "dora", "ia3")


def _task_type(model: nn.Module) -> str | None:
    cls = type(model).__name__
    for suffix, task in (("ForSequenceClassification", "SEQ_CLS"), ("ForCausalLM", "CAUSAL_LM"),
                         ("LMHeadModel", "CAUSAL_LM"), ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
                         ("ForTokenClassification", "TOKEN_CLS"), ("ForQuestionAnswering", "QUESTION_ANS")):
        if cls.endswith(suffix):
            return task
    return None


# -- export ----------------------------------------------------------------------------------------

def save_peft(am: AdaptedModel, folder: Path, names: list[str]) -> None:
    for n in names:
        method = am.method_of(n).name
        if method not in EXPORTABLE:
            raise ConfigError(f"format='peft' holds {', '.join(EXPORTABLE)} adapters; {n!r} is {method}: save it with format='petkit'")
    files = {}
    for n in names:
        sub = folder if n == "default" else folder / n
        config, tensors = _export_one(am, n)
        meta = {"format": "pt", "petkit_base": json.dumps(am.base_fingerprint)}
        files[sub] = {WEIGHTS_NAME: (tensors, meta), CONFIG_NAME: config}
    for sub, content in files.items():
        write_files(sub, content)


def _export_one(am: AdaptedModel, name: str):
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
    common = {"peft_type": "IA3" if isinstance(cfg, IA3Config) else "LORA", "task_type": _task_type(am.base),
              "target_modules": targets, "modules_to_save": heads or None, "base_model_name_or_path": None,
              "inference_mode": True, "fan_in_fan_out": fan_in_fan_out, "revision": None}
    if isinstance(cfg, IA3Config):
        return {**common, "feedforward_modules": feedforward, "init_ia3_weights": True}, tensors
    r0 = max(set(ranks.values()), key=list(ranks.values()).count) if ranks else cfg.r
    a0 = max(set(alphas.values()), key=list(alphas.values()).count) if alphas else cfg.alpha
    config = {**common, "r": r0, "lora_alpha": a0, "lora_dropout": cfg.dropout, "use_rslora": cfg.rslora,
              "use_dora": isinstance(cfg, DoraConfig), "init_lora_weights": True, "bias": "none",
              "rank_pattern": {_exact(p): v for p, v in ranks.items() if v != r0},
              "alpha_pattern": {_exact(p): v for p, v in alphas.items() if v != a0}}
    return config, tensors


def _exact(path: str) -> str:
    # PEFT matches pattern keys with re.match(rf"(.*\.)?({key})$", name): an anchored full path.
    return "^" + re.escape(path)


# -- import ----------------------------------------------------------------------------------------

_UNSUPPORTED = {  # PEFT LoRA options petkit cannot reproduce, with the value that means "off"
    "lora_bias": False, "layers_to_transform": None, "layer_replication": None, "target_parameters": None,
    "use_qalora": False, "alora_invocation_tokens": None, "trainable_token_indices": None, "use_bdlora": None,
}


def load_peft(am: AdaptedModel, folder: Path, config: dict, name: str, force: bool) -> None:
    from petkit.core.files import check_base, copy_into

    peft_type = config.get("peft_type")
    if peft_type not in ("LORA", "IA3"):
        raise AdapterFileError(f"PEFT adapters of type {peft_type!r} are not supported yet; petkit reads LORA (incl. DoRA) and IA3")
    for key, off in _UNSUPPORTED.items():
        if config.get(key, off) not in (off, [], {}, False, None):
            raise AdapterFileError(f"this PEFT adapter uses {key}={config[key]!r}, which petkit does not support")
    tensors, metadata = read_tensors(folder / WEIGHTS_NAME)
    if "petkit_base" in metadata:
        try:
            saved = json.loads(metadata["petkit_base"])
        except (ValueError, RecursionError):
            raise AdapterFileError(f"{folder / WEIGHTS_NAME}: the petkit_base metadata is corrupt") from None
        check_base(am, saved, force, folder)
    module_tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            raise AdapterFileError(f"{folder / WEIGHTS_NAME}: key {key!r} does not start with {PREFIX!r}")
        path, _, leaf = _split_key(key[len(PREFIX):])
        module_tensors.setdefault(path, {})[leaf] = value
    heads = [h for h in (config.get("modules_to_save") or []) if isinstance(h, str)]
    head_paths = [p for p in module_tensors if p.split(".")[-1] in heads or p in heads]
    targets = [p for p in module_tensors if p not in head_paths]
    if not targets:
        raise AdapterFileError(f"{folder / WEIGHTS_NAME} holds no adapter tensors")
    cfg = _petkit_config(config, peft_type, targets, bool(head_paths), folder)
    am.add(cfg, name, init=False)
    expected, saved = {}, {}
    for path, layer, delta in am.layers(name):
        mine = delta.state_dict(keep_vars=True)
        theirs = module_tensors.get(path, {})
        for k, v in _to_petkit(delta, theirs).items():
            saved[f"{path}.{k}"] = v
        for k, v in mine.items():
            expected[f"{path}.{k}"] = v
    copy_into(expected, saved, str(folder))


def _split_key(key: str) -> tuple[str, str, str]:
    for leaf in ("lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector",
                 "ia3_l", "weight", "bias"):
        if key.endswith("." + leaf):
            return key[: -len(leaf) - 1], ".", leaf
    raise AdapterFileError(f"unrecognised PEFT tensor name {key!r}")


def _pattern(key: str) -> str:
    return rf"re:(.*\.)?({key})"


def _petkit_config(config: dict, peft_type: str, targets: list[str], head: bool, folder: Path):
    try:
        if peft_type == "IA3":
            ff = config.get("feedforward_modules") or []
            # PEFT: a string is a regex (full match), a list holds names matched as dotted suffixes, like ours
            ff = ["re:" + ff] if isinstance(ff, str) else ff
            return IA3Config(targets=targets, feedforward=ff, train_head=head)
        cls = DoraConfig if config.get("use_dora") else LoraConfig
        ranks = config.get("rank_pattern") or {}
        alphas = config.get("alpha_pattern") or {}
        if not isinstance(ranks, dict) or not isinstance(alphas, dict):
            raise ConfigError("rank_pattern and alpha_pattern must be JSON objects")
        return cls(targets=targets, r=config.get("r", 8), alpha=config.get("lora_alpha", 8),
                   dropout=config.get("lora_dropout", 0.0) or 0.0, rslora=bool(config.get("use_rslora", False)),
                   rank_pattern={_pattern(k): v for k, v in ranks.items()},
                   alpha_pattern={_pattern(k): v for k, v in alphas.items()}, train_head=head)
    except ConfigError as exc:
        raise AdapterFileError(f"{folder / CONFIG_NAME}: {exc}") from None


def _to_petkit(delta, theirs: dict) -> dict[str, torch.Tensor]:
    if isinstance(delta, HeadDelta):
        return {f"module.{k}": v for k, v in theirs.items()}
    if isinstance(delta, IA3Delta):
        return {"scale": theirs["ia3_l"].reshape(-1)} if "ia3_l" in theirs else {}
    out = {}
    for src, dst in (("lora_A.weight", "A"), ("lora_B.weight", "B"), ("lora_embedding_A", "A"),
                     ("lora_embedding_B", "B"), ("lora_magnitude_vector", "magnitude")):
        if src in theirs:
            out[dst] = theirs[src]
    return out
