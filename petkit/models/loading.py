"""``load_model`` / ``load_tokenizer``: an alias or a local Hugging Face folder, never a hub download."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from petkit.core.errors import ConfigError

from .aliases import ALIASES, ModelNotFound, minilm_dir
from .gguf_cache import smollm2_checkpoint

# No hub access, ever. transformers/huggingface_hub read these at import time, so also pass
# local_files_only=True below in case they were imported before petkit.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODEL_TASKS = ("classification", "causal_lm", "base", "regression")


def resolve(name_or_path: str | Path) -> Path:
    """The local folder for an alias (converting SmolLM2 on first use) or an existing HF folder."""
    name = str(name_or_path)
    if name == "minilm":
        return minilm_dir()
    if name == "smollm2":
        return smollm2_checkpoint()
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    if path.exists():
        raise ModelNotFound(f"{path} is not a Hugging Face model folder (no config.json)")
    known = "\n".join(f"  {a.name:8} {a.description}  [{a.pip_install}]" for a in ALIASES.values())
    raise ModelNotFound(f"unknown model {name!r}: not an alias and not a local folder. Aliases:\n{known}")


def load_tokenizer(name_or_path: str | Path):
    """A tokenizer that always has a pad token (decoders fall back to EOS), for batch padding."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(name_or_path), local_files_only=True)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | Path,
    task: str = "classification",
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
    regression=None,
):
    """Load a pre-trained model for a task: ``classification`` (a new, randomly initialised head of
    ``num_labels`` outputs; seed torch first for a reproducible head), ``causal_lm``, ``base``
    (the bare encoder/decoder) or ``regression`` (a ``RegressionModel``: the bare encoder, or the causal
    LM of a decoder, with a new continuous head of ``num_labels`` outputs or as the ``regression``
    RegressionConfig says). Aliases: ``minilm``, ``smollm2``; any local HF folder works too.
    """
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
    )

    if task not in MODEL_TASKS:
        raise ConfigError(f"task must be one of {MODEL_TASKS}, got {task!r}")
    if num_labels is not None and (task not in ("classification", "regression") or num_labels < 1):
        raise ConfigError(f"num_labels={num_labels!r} only applies to task='classification' or 'regression' "
                          f"and must be >= 1")
    if regression is not None and task != "regression":
        raise ConfigError(f"a RegressionConfig applies to task='regression', not {task!r}")
    folder = resolve(name_or_path)
    kwargs: dict = {"dtype": dtype, "local_files_only": True}
    if task == "classification":
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        model = AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
        # Decoder classifiers pick the last non-pad token, so they need a pad id; use the tokenizer's.
        if model.config.pad_token_id is None:
            model.config.pad_token_id = load_tokenizer(folder).pad_token_id
    elif task == "causal_lm":
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    elif task == "regression":
        return _regression_model(folder, kwargs, num_labels, regression).eval()
    else:
        model = AutoModel.from_pretrained(folder, **kwargs)
    return model.eval()


def _regression_model(folder: Path, kwargs: dict, outputs: int | None, config):
    """A RegressionModel on the folder's bare encoder, or on its causal LM (so text can train jointly)."""
    import json

    from transformers import AutoModel, AutoModelForCausalLM

    from .regression import RegressionConfig, RegressionModel

    if config is None:
        config = RegressionConfig(outputs=outputs or 1)
    elif outputs is not None and outputs != config.outputs:
        raise ConfigError(f"num_labels={outputs} but the RegressionConfig has outputs={config.outputs}")
    architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    decoder = any(a.endswith("ForCausalLM") for a in architectures)
    backbone = (AutoModelForCausalLM if decoder else AutoModel).from_pretrained(folder, **kwargs)
    if decoder and backbone.config.pad_token_id is None:
        backbone.config.pad_token_id = load_tokenizer(folder).pad_token_id
    return RegressionModel(backbone, config)
