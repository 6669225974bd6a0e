"""`petkit.load`: put the adapters of a saved folder, in petkit's or Hugging Face PEFT's format, onto a model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from petkit.core.errors import AdapterFileError, PetkitError
from petkit.core.files import apply_task_file, load_petkit
from petkit.core.model import AdaptedModel
from petkit.core.storage import CONFIG_NAME, read_json
from petkit.interop.peft import load_peft


def load(model: nn.Module, path, name: str | None = None, *, as_name: str | None = None, force: bool = False,
         trainable: bool = False) -> AdaptedModel:
    """Load adapters saved by petkit or Hugging Face PEFT onto `model` (wrapped in place).

    name: load only that adapter from a multi-adapter petkit file (PEFT: the name to give it).
    as_name: the name the one loaded adapter gets (to load several files saved as "default" side by side).
    force: load even if the file was saved for a different base model.
    On any error the model is left exactly as it was.
    """
    path = Path(path)
    if not path.is_dir():
        raise AdapterFileError(f"adapter folder {path} does not exist")
    config = read_json(path / CONFIG_NAME)
    base = model.base if isinstance(model, AdaptedModel) else model
    restore_task = apply_task_file(base, path)  # first: a task the model cannot take is refused before any change
    created = not isinstance(model, AdaptedModel)
    am = AdaptedModel(model) if created else model
    before = set(am.adapters)
    grads = [(p, p.requires_grad) for p in am.parameters()]  # adding an adapter freezes the base
    try:
        if config.get("format") == "petkit":
            load_petkit(am, path, config, name, force, as_name)
        elif "peft_type" in config:
            load_peft(am, path, config, as_name or name or "default", force)
        else:
            raise AdapterFileError(f"{path / CONFIG_NAME} is neither a petkit nor a PEFT adapter config")
    except Exception as exc:
        restore_task()
        for n in set(am.adapters) - before:
            am.delete(n)  # new adapters are never merged, so this restores the model exactly
        for p, flag in grads:
            p.requires_grad_(flag)
        if isinstance(exc, PetkitError):
            raise
        raise AdapterFileError(f"could not load {path}: {exc}") from exc
    for n in set(am.adapters) - before:
        am.set_trainable(n, trainable)
    return am
