"""Hugging Face PEFT's on-disk format for prompt learning: PROMPT_TUNING.

PEFT's prompt-learning files differ from its tuner files: the prompt is one tensor
`prompt_embeddings` (num_virtual_tokens × token_dim, times num_transformer_submodules), and a
trained task head is keyed `base_model.<head>.<tensor>` (the model is not wrapped by a tuner, so
there is no `base_model.model.` prefix). petkit puts prompts on the encoder only, so it writes and
reads num_transformer_submodules = 1 (PEFT's default for encoder–decoder models is 2, a prompt for
the decoder too: such files are refused with that reason).
"""

from __future__ import annotations

from pathlib import Path

from petkit.core.errors import AdapterFileError, ConfigError
from petkit.core.model import MODEL_KEY, AdaptedModel
from petkit.core.storage import WEIGHTS_NAME, read_tensors
from petkit.methods.head import HeadDelta
from petkit.methods.prompt import PromptTuningConfig

HEAD_PREFIX = "base_model."
PROMPT_KEY = "prompt_embeddings"


def export_prompt(am: AdaptedModel, name: str) -> tuple[dict, dict]:
    from petkit.interop.peft import peft_task_type

    delta = am.model_deltas[name]
    if delta.vision:
        raise ConfigError("PEFT's prompt tuning has no image-classification task type; save this adapter with "
                          "format='petkit'")
    tensors = {PROMPT_KEY: delta.embedding.detach()}
    heads = []
    for path, _, d in am.layers(name):
        if isinstance(d, HeadDelta):
            heads.append(path)
            tensors.update({f"{HEAD_PREFIX}{path}.{k}": v for k, v in d.module.state_dict().items()})
    hf = delta.hf.config
    config = {
        "peft_type": "PROMPT_TUNING", "task_type": peft_task_type(am, heads),
        "num_virtual_tokens": delta.m, "token_dim": delta.embedding.shape[1], "num_transformer_submodules": 1,
        "num_attention_heads": _first(hf, "num_attention_heads", "n_head", "num_heads"),
        "num_layers": _first(hf, "num_hidden_layers", "n_layer", "num_layers"),
        "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None, "modules_to_save": heads or None, "base_model_name_or_path": None,
        "inference_mode": True, "revision": None,
    }
    return config, tensors


def load_prompt(am: AdaptedModel, folder: Path, config: dict, name: str):
    """Add the adapter and return (expected, saved) tensors for the caller's checks and copy."""
    from petkit.interop.peft import _check_heads, _head_of, _names, _short

    file = folder / WEIGHTS_NAME
    tensors, metadata = read_tensors(file)
    subs, m = config.get("num_transformer_submodules", 1), config.get("num_virtual_tokens")
    if subs not in (1, None):
        raise AdapterFileError(f"{file}: num_transformer_submodules={_short(subs)} (a prompt for the decoder too); "
                               "petkit prompts the encoder only and reads files with 1")
    if not isinstance(m, int) or isinstance(m, bool) or m <= 0:
        raise AdapterFileError(f"{folder}: num_virtual_tokens must be a positive integer, got {_short(m)}")
    prompt = tensors.pop(PROMPT_KEY, None)
    if prompt is None:
        raise AdapterFileError(f"{file} holds no {PROMPT_KEY!r} tensor")
    names = _names(config.get("modules_to_save"))
    heads: dict[str, dict] = {}
    for key, value in tensors.items():
        head = _head_of(key[len(HEAD_PREFIX):], names) if key.startswith(HEAD_PREFIX) else None
        if head is None:
            raise AdapterFileError(f"{file}: tensor {_short(key)} is neither the prompt nor a task head's")
        heads.setdefault(head, {})[key[len(HEAD_PREFIX) + len(head) + 1:]] = value
    _check_heads(am, heads, names, file)
    am.add(PromptTuningConfig(num_virtual_tokens=m, train_head=bool(heads)), name, init=False)
    saved = {f"{MODEL_KEY}.embedding": prompt}
    saved.update({f"{h}.module.{k}": v for h, leaves in heads.items() for k, v in leaves.items()})
    return am.adapter_parameters(name), saved, metadata


def _first(config, *names):
    return next((getattr(config, n) for n in names if isinstance(getattr(config, n, None), int)), None)

