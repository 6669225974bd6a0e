"""Reading and writing adapter files safely: atomic writes, clear errors on bad files.

Weights are only ever read from safetensors (no pickle). A JSON or safetensors file that is missing,
truncated or malformed becomes one AdapterFileError naming the file; nothing raw escapes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from petkit.core.errors import AdapterFileError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# {"task": ..., ...}: what a base model with a task of its own (petkit.models.RegressionModel: targets'
# mean/std) needs back to predict as it did; written from base.task_file(), read by base.load_task_file()
TASK_NAME = "task.json"
LABELS_NAME = "labels.json"  # {"labels": a classifier adapter's class names in head order} (petkit train)


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise AdapterFileError(f"{path} not found; an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AdapterFileError(f"{path} cannot be read ({exc.strerror or exc})") from None
    # ValueError covers JSONDecodeError, bad UTF-8 and integers too long to convert
    except (ValueError, RecursionError) as exc:
        raise AdapterFileError(f"{path} is not valid JSON ({type(exc).__name__}); the file is corrupt or truncated") from None
    if not isinstance(data, dict):
        raise AdapterFileError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file."""
    if not path.is_file():
        raise AdapterFileError(f"{path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for every kind of bad file
        why = " ".join(str(exc).split())[:120]  # one line, even when the file put newlines in a tensor name
        raise AdapterFileError(f"{path} is not a readable safetensors file ({why}); it is corrupt or truncated") from None
    return tensors, metadata


def write_files(folder: Path, files: dict[str, object]) -> None:
    """Write {relative name: dict-for-JSON | (tensors, metadata)} under folder, all or nothing.

    Names may hold a subfolder ("other/adapter_config.json"). Every file is first written completely
    to a temporary name next to its target; only when all of them succeeded are they moved into place,
    so a failed save leaves the previous files intact.
    """
    temps: list[tuple[str, Path]] = []
    try:
        for name, content in files.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            temps.append((tmp, target))
            if isinstance(content, dict):
                Path(tmp).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            else:
                tensors, metadata = content
                save_file({k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()},
                          tmp, metadata=metadata)
        for tmp, target in temps:
            os.replace(tmp, target)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
