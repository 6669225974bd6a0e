"""Learning-rate schedules: linear warmup, then linear decay, cosine decay or constant.

The curves match ``transformers.get_{linear,cosine,constant}_schedule_with_warmup`` (so results
compare with HF-trained runs), written as one pure function of the step: the trainer sets the rate
itself before every optimizer step, so there is no scheduler object whose state must be saved.
"""

from __future__ import annotations

import math

from .config import TrainConfig


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    if isinstance(cfg.warmup, float):
        return math.ceil(cfg.warmup * total_steps)
    return min(cfg.warmup, total_steps)


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    """Multiplier on the peak rate for the optimizer step with 0-based index ``step``."""
    if step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule {schedule!r}")


def learning_rate(step: int, total_steps: int, cfg: TrainConfig) -> float:
    return cfg.lr * lr_factor(step, total_steps, warmup_steps(cfg, total_steps), cfg.schedule)
