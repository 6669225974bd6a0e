"""Hugging Face PEFT's on-disk format for prompt learning: PROMPT_TUNING and PREFIX_TUNING.

PEFT's prompt-learning files differ from its tuner files: the prompt is one tensor
`prompt_embeddings` (num_virtual_tokens × token_dim, times num_transformer_submodules), and a
trained task head is keyed `base_model.<head>.<tensor>` (the model is not wrapped by a tuner, so
there is no `base_model.model.` prefix). petkit puts prompts on the encoder only, so it writes and
reads num_transformer_submodules = 1 (PEFT's default for encoder–decoder models is 2, a prompt for
the decoder too: such files are refused with that reason).

Prefixes: `prompt_embeddings` is the folded table m × (layers·2·token_dim), token_dim = kv heads ×
head dim, the layout petkit keeps (an MLP-trained prefix is folded on export, as PEFT does on
saving; P-tuning v2 deep prompts are written the same way and read back as `prefix`). PEFT feeds
prefixes as a KV cache, which BERT-style encoders do not take and which T5 gets
on its decoder only, so prefix files are written and read for decoder-only causal LMs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from petkit.core.errors import AdapterFileError, ConfigError
from petkit.core.head import HeadDelta
from petkit.core.model_delta import MODEL_KEY
from petkit.core.storage import WEIGHTS_NAME, read_tensors
from petkit.interop.peft_common import check_heads, head_of, module_names, peft_task_type, short
from petkit.methods.prefix import PrefixDelta, PrefixTuningConfig
from petkit.methods.prompt import PromptTuningConfig

HEAD_PREFIX = "base_model."
PROMPT_KEY = "prompt_embeddings"


def export_prompt(am, name: str) -> tuple[dict, dict]:
    delta = am.model_deltas[name]
    if am.method_of(name).name == "deep_prompt" and not isinstance(delta, PrefixDelta):
        raise ConfigError("PEFT has no per-layer prompt tokens (VPT-deep); save this adapter with format='petkit'")
    prefix = isinstance(delta, PrefixDelta)  # prefix tuning, or P-tuning v2 deep prompts on text
    if prefix:
        if not delta.causal:
            raise ConfigError(f"PEFT runs prefixes as a KV cache, which {type(delta.hf).__name__} does not take on its "
                              "encoder; PEFT prefix files are written for decoder-only causal LMs: save this "
                              "adapter with format='petkit'")
        with torch.no_grad():
            table = delta.prefixes().permute(3, 0, 1, 2, 4).reshape(delta.m, -1)
    elif delta.vision:
        raise ConfigError("PEFT's prompt tuning has no image-classification task type; save this adapter with "
                          "format='petkit'")
    else:
        table = delta.embedding.detach()
    tensors = {PROMPT_KEY: table}
    heads = []
    for path, _, d in am.layers(name):
        if isinstance(d, HeadDelta):
            heads.append(path)
            tensors.update({f"{HEAD_PREFIX}{path}.{k}": v for k, v in d.module.state_dict().items()})
    hf = delta.hf.config
    common = {
        "task_type": peft_task_type(am, heads), "num_virtual_tokens": delta.m, "num_transformer_submodules": 1,
        "modules_to_save": heads or None, "base_model_name_or_path": None, "inference_mode": True, "revision": None,
    }
    if prefix:
        token_dim = delta.kv_heads * delta.head_dim
        return {**common, "peft_type": "PREFIX_TUNING", "token_dim": token_dim, "num_attention_heads": delta.kv_heads,
                "num_layers": len(delta.attention), "encoder_hidden_size": token_dim, "prefix_projection": False}, tensors
    return {
        **common, "peft_type": "PROMPT_TUNING", "token_dim": table.shape[1],
        "num_attention_heads": _first(hf, "num_attention_heads", "n_head", "num_heads"),
        "num_layers": _first(hf, "num_hidden_layers", "n_layer", "num_layers"),
        "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
    }, tensors


def load_prompt(am, folder: Path, config: dict, name: str):
    """Add the adapter and return (expected, saved) tensors for the caller's checks and copy."""
    file = folder / WEIGHTS_NAME
    tensors, metadata = read_tensors(file)
    subs, m = config.get("num_transformer_submodules", 1), config.get("num_virtual_tokens")
    if subs not in (1, None):
        raise AdapterFileError(f"{file}: num_transformer_submodules={short(subs)} (a prompt for the decoder too); "
                               "petkit prompts the encoder only and reads files with 1")
    if not isinstance(m, int) or isinstance(m, bool) or m <= 0:
        raise AdapterFileError(f"{folder}: num_virtual_tokens must be a positive integer, got {short(m)}")
    prompt = tensors.pop(PROMPT_KEY, None)
    if prompt is None:
        raise AdapterFileError(f"{file} holds no {PROMPT_KEY!r} tensor")
    names = module_names(config.get("modules_to_save"))
    heads: dict[str, dict] = {}
    for key, value in tensors.items():
        head = head_of(key[len(HEAD_PREFIX):], names) if key.startswith(HEAD_PREFIX) else None
        if head is None:
            raise AdapterFileError(f"{file}: tensor {short(key)} is neither the prompt nor a task head's")
        heads.setdefault(head, {})[key[len(HEAD_PREFIX) + len(head) + 1:]] = value
    train_head = check_heads(am, heads, names, file)
    if config.get("peft_type") == "PREFIX_TUNING":
        am.add(PrefixTuningConfig(num_virtual_tokens=m, projection=False, train_head=train_head), name, init=False)
        _check_prefix_shape(am.model_deltas[name], config, folder)
        saved = {f"{MODEL_KEY}.table": prompt}
    else:
        am.add(PromptTuningConfig(num_virtual_tokens=m, train_head=train_head), name, init=False)
        saved = {f"{MODEL_KEY}.embedding": prompt}
    saved.update({f"{h}.module.{k}": v for h, leaves in heads.items() for k, v in leaves.items()})
    return am.adapter_parameters(name), saved, metadata


def _check_prefix_shape(delta, config: dict, folder: Path) -> None:
    """The file's layers and token_dim must be this model's (the tensor shape check comes after)."""
    want = {"num_layers": len(delta.attention), "token_dim": delta.kv_heads * delta.head_dim}
    for key, value in want.items():
        if config.get(key) not in (None, value):
            raise AdapterFileError(f"{folder}: this prefix was made for {key}={config[key]!r}, the model has {value}")


def _first(config, *names):
    return next((getattr(config, n) for n in names if isinstance(getattr(config, n, None), int)), None)

