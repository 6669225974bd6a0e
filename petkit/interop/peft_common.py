"""What PEFT's tuner files (peft_tuner.py) and prompt-learning files (peft_prompt.py) share: task types,
the task-head modules a file saves (`modules_to_save`), petkit's base-model fingerprint in the
safetensors metadata, and short quotes of values read from a file."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from petkit.core.errors import AdapterFileError
from petkit.core.targeting import HEAD_NAMES, task_head_names

# The heads PEFT's task types add to modules_to_save by name (peft_model.py, classifier_module_names).
_PEFT_TASK_HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
                    "QUESTION_ANS": ("qa_outputs",)}


def peft_task_type(am, heads: list[str]) -> str | None:
    """PEFT's task_type for an adapter that trained `heads`. PEFT's classification task types always
    restore the heads they name (modules_to_save), so an adapter that did not train those must not
    claim one, or PEFT fails looking for their weights."""
    task = _task_type(am.base)
    named = [h for h in task_head_names(am.base) if h.split(".")[-1] in _PEFT_TASK_HEADS.get(task, ())]
    return task if all(h in heads for h in named) else None


def _task_type(model: nn.Module) -> str | None:
    cls = type(model).__name__
    for suffix, task in (("ForSequenceClassification", "SEQ_CLS"), ("ForCausalLM", "CAUSAL_LM"),
                         ("LMHeadModel", "CAUSAL_LM"), ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
                         ("ForTokenClassification", "TOKEN_CLS"), ("ForQuestionAnswering", "QUESTION_ANS")):
        if cls.endswith(suffix):
            return task
    return None


def short(value) -> str:
    """repr(value), cut to 60 characters: values come from a file, so keep garbage from flooding a message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def module_names(value) -> list[str]:
    """A PEFT module-name list (a string or a list of strings; anything else holds no names)."""
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def head_of(key: str, names: list[str]) -> str | None:
    """The module in modules_to_save that holds `key`. PEFT matches names as plain string suffixes, so
    "classifier" also saves DistilBERT's pre_classifier."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if any(prefix.endswith(n) for n in names):
            return prefix
    return None


def check_heads(am, heads: dict, names: list[str], file: Path):
    """The train_head setting that restores the head modules a file saved (modules_to_save): True for
    the whole task head, the list of its parts for some of them (PEFT saves DistilBERT's classifier,
    not its pre_classifier), False for none."""
    task_heads = task_head_names(am.base)
    for h in heads:
        if h not in task_heads:
            raise AdapterFileError(f"{file} saves module {h!r} (modules_to_save), but petkit restores only the task "
                                   f"head ({', '.join(task_heads) or f'none here; heads are named {HEAD_NAMES}'})")
    for h in task_heads:
        if h not in heads and any(h.endswith(n) for n in names):
            raise AdapterFileError(f"{file} lists the task head {h!r} in modules_to_save but holds no weights for it")
    if not heads:
        return False
    return True if set(heads) == set(task_heads) else tuple(h for h in task_heads if h in heads)


def fingerprint(metadata: dict, file: Path):
    """The base-model fingerprint petkit wrote into the safetensors metadata (None in PEFT's own files)."""
    if "petkit_base" not in metadata:
        return None
    try:
        return json.loads(metadata["petkit_base"])
    except (ValueError, RecursionError):
        raise AdapterFileError(f"{file}: the petkit_base metadata is corrupt") from None
