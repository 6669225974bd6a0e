"""A continual run's checkpoint after each task: the tensors that changed (adapters, the head, EMA
copies; the whole backbone when the method trains it) in `task-<t>.safetensors`, and `progress.json`
(the settings, the accuracy rows so far, the learner's other state, the RNG) pointing at it.

Both are written to temporary names and moved into place tensors first, so a crash leaves the previous
task's pair intact; the older tensor file is removed only after the new pair is in place.
"""

from __future__ import annotations

from pathlib import Path

from petkit.core.errors import AdapterFileError
from petkit.core.storage import read_tensors, write_files
from petkit.train.checkpoint import CheckpointError

PROGRESS = "progress.json"


def _tensors_name(t: int) -> str:
    return f"task-{t}.safetensors"


def trained_tensors(model, learner, frozen: set[int]) -> dict:
    state = model.state_dict(keep_vars=True)
    return {k: v.detach() for k, v in state.items() if learner.trains_base or id(v) not in frozen}


def save_task_state(out: Path, t: int, model, learner, frozen: set[int], record: dict) -> None:
    record = {**record, "learner": learner.extra_state(), "tensors": _tensors_name(t)}
    write_files(out, {_tensors_name(t): (trained_tensors(model, learner, frozen), {"task": str(t)}), PROGRESS: record})
    for old in out.glob("task-*.safetensors"):
        if old.name != _tensors_name(t):
            old.unlink()


def load_task_state(out: Path, t: int, model, learner, frozen: set[int]) -> None:
    """Load task t's tensors into the model (rebuilt to the same structure) and the learner's state."""
    import json

    record = json.loads((out / PROGRESS).read_text())
    try:
        tensors, _ = read_tensors(out / record.get("tensors", _tensors_name(t)))
    except AdapterFileError as exc:
        raise CheckpointError(f"cannot resume: {exc}") from None
    own = model.state_dict(keep_vars=True)
    stray = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in tensors if k in own and tuple(own[k].shape) != tuple(tensors[k].shape))
    if stray or wrong:
        raise CheckpointError(f"cannot resume from {out}: its tensors do not fit this model "
                              f"({'unknown ' + stray[0] if stray else 'shape of ' + wrong[0]}); was it written by "
                              "another method or model?")
    missing = sorted(k for k, v in trained_tensors(model, learner, frozen).items() if k not in tensors)
    if missing:
        raise CheckpointError(f"cannot resume from {out}: it has no {missing[0]} ({len(missing)} trained tensors missing)")
    model.load_state_dict(tensors, strict=False)
    learner.load_extra_state(record.get("learner", {}))
