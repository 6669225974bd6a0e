"""Resumable training checkpoints, without pickle.

A checkpoint is a folder ``<output_dir>/checkpoints/step-00000120/`` holding

- ``trainable.safetensors``      the trainable parameters, by name;
- ``trainer_state.safetensors``  optimizer state tensors (``<param name>.<state key>``) and the
                                 torch RNG state (``rng.torch``, a uint8 tensor);
- ``trainer_state.json``         step/epoch/position, config, Python and numpy RNG states, the
                                 SHA-256 of both tensor files.

The folder is written under a temporary name and renamed into place (the rename is atomic), so
a crash mid-write leaves the previous checkpoint as it was. Checksums catch later damage.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from petkit.core.errors import PetkitError

FORMAT = "petkit-checkpoint/1"
WEIGHTS = "trainable.safetensors"
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
TORCH_RNG = "rng.torch"
_NAME = re.compile(r"^step-(\d+)$")


class CheckpointError(PetkitError, RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or does not fit the model."""


@dataclass
class Checkpoint:
    path: Path
    params: dict[str, torch.Tensor]
    state_tensors: dict[str, torch.Tensor]
    state: dict  # the JSON document

    @property
    def step(self) -> int:
        return self.state["step"]


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders, oldest first (temporary folders of unfinished writes are not listed)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


# ----------------------------------------------------------------------------------------- saving

def save_checkpoint(output_dir: str | Path, step: int, named_params: list[tuple[str, torch.nn.Parameter]],
                    optimizer: torch.optim.Optimizer, state: dict, keep: int,
                    rank_rngs: list[torch.Tensor] | None = None) -> Path:
    """Write the checkpoint of ``step`` atomically, then delete all but the newest ``keep``.

    ``named_params`` must be in the optimizer's parameter order (it maps optimizer slots to names).
    ``rank_rngs``: in a multi-process run, every rank's torch RNG state (rank 0's is the current one).
    """
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()

    names = [name for name, _ in named_params]
    optimizer_tensors, optimizer_scalars = _split_optimizer_state(optimizer, names)
    save_file({name: p.detach().cpu().contiguous() for name, p in named_params}, tmp / WEIGHTS)
    rngs = {f"{TORCH_RNG}.rank{r}": rng for r, rng in enumerate(rank_rngs or []) if r > 0}
    save_file({**optimizer_tensors, TORCH_RNG: torch.get_rng_state(), **rngs}, tmp / STATE_TENSORS)
    document = {
        "format": FORMAT,
        "step": step,
        **state,
        "param_names": names,
        "optimizer_scalars": optimizer_scalars,
        "rng": {"python": _python_rng_state(), "numpy": _numpy_rng_state()},
        "sha256": {f: _sha256(tmp / f) for f in (WEIGHTS, STATE_TENSORS)},
    }
    (tmp / STATE_JSON).write_text(json.dumps(document, indent=1))
    for f in (WEIGHTS, STATE_TENSORS, STATE_JSON):
        _fsync(tmp / f)

    _replace_dir(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _split_optimizer_state(optimizer, names: list[str]) -> tuple[dict, dict]:
    """Optimizer state keyed by parameter name: tensors for safetensors, plain numbers for JSON."""
    tensors, scalars = {}, {}
    for index, slot in optimizer.state_dict()["state"].items():
        for key, value in slot.items():
            if torch.is_tensor(value):
                tensors[f"{names[index]}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{names[index]}.{key}"] = value
    return tensors, scalars


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():  # re-saving a step (e.g. after a resume): swap, then drop the old copy
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync(final.parent)


def _remove_leftovers(root: Path) -> None:
    """Temporary folders of writes that crashed before their rename."""
    for p in root.iterdir():
        if p.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(p, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


# ---------------------------------------------------------------------------------------- loading

def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify one checkpoint folder; any problem is a CheckpointError saying which file."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    try:
        state = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {STATE_JSON} is missing, so the checkpoint is incomplete") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / STATE_JSON} is corrupt or truncated (not valid JSON: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path / STATE_JSON}: not a {FORMAT} file")
    missing = [k for k in ("step", "sha256", "param_names", "optimizer_scalars", "rng") if k not in state]
    if missing:
        raise CheckpointError(f"{path / STATE_JSON} lacks {missing}: the file is damaged or from another tool")
    for name, digest in state["sha256"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing, so the checkpoint is incomplete")
        if _sha256(file) != digest:
            raise CheckpointError(f"{file} is corrupt or truncated: its SHA-256 differs from the one recorded at save time")
    try:
        params, state_tensors = load_file(path / WEIGHTS), load_file(path / STATE_TENSORS)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read tensors ({e})") from None
    return Checkpoint(path, params, state_tensors, state)


def latest_checkpoint(output_dir: str | Path) -> Checkpoint | None:
    """The newest checkpoint that verifies, warning about each newer one that does not.

    None when there are no checkpoints; CheckpointError when there are some but none is valid.
    """
    problems = []
    for path in reversed(list_checkpoints(output_dir)):
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            warnings.warn(f"skipping unusable checkpoint: {e}", stacklevel=2)
            continue
        if problems:
            warnings.warn(f"resuming from the older checkpoint {path.name} instead", stacklevel=2)
        return checkpoint
    if problems:
        raise CheckpointError(f"no usable checkpoint in {checkpoints_dir(output_dir)}:\n  " + "\n  ".join(problems))
    return None


def restore(checkpoint: Checkpoint, named_params: list[tuple[str, torch.nn.Parameter]],
            optimizer: torch.optim.Optimizer, rank: int = 0) -> None:
    """Copy saved weights, optimizer state and all RNG states into the live objects (``rank``: this
    process's rank in a multi-process run, whose own torch RNG state is restored if it was saved)."""
    names = [name for name, _ in named_params]
    saved = checkpoint.state["param_names"]
    if names != saved:
        missing, extra = sorted(set(saved) - set(names)), sorted(set(names) - set(saved))
        raise CheckpointError(
            f"{checkpoint.path}: the model's trainable parameters differ from the checkpoint's "
            f"(in the checkpoint only: {missing[:5]}; in the model only: {extra[:5]}; or a different order)"
        )
    for name, param in named_params:
        value = checkpoint.params[name]
        if value.shape != param.shape:
            raise CheckpointError(f"{checkpoint.path}: {name} has shape {tuple(value.shape)} in the checkpoint "
                                  f"but {tuple(param.shape)} in the model")
        with torch.no_grad():
            param.copy_(value)

    index = {name: i for i, name in enumerate(names)}
    slots: dict[int, dict] = {}
    entries = [*checkpoint.state_tensors.items(), *checkpoint.state["optimizer_scalars"].items()]
    for key, value in entries:
        if key.startswith(TORCH_RNG):
            continue
        name, field = key.rsplit(".", 1)
        slots.setdefault(index[name], {})[field] = value
    optimizer.load_state_dict({"state": slots, "param_groups": optimizer.state_dict()["param_groups"]})

    own = checkpoint.state_tensors.get(f"{TORCH_RNG}.rank{rank}") if rank else checkpoint.state_tensors[TORCH_RNG]
    if own is not None:  # a rank the saving run did not have keeps the state it was seeded with
        torch.set_rng_state(own)
    version, internal, gauss = checkpoint.state["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = checkpoint.state["rng"]["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
