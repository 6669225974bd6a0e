"""``TrainConfig``: every knob of a training run, checked when it is made."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from petkit.core.errors import ConfigError
from petkit.core.mapping import config_from_mapping, int_at_least

SCHEDULES = ("linear", "cosine", "constant")
PARALLEL = ("ddp", "fsdp")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run. Steps are optimizer steps (one per ``grad_accum`` micro-batches).

    - ``epochs`` passes over the data, unless ``max_steps`` is set: then exactly that many steps
      are taken, over as many epochs as needed.
    - ``batch_size`` is the micro-batch; the effective batch is ``batch_size * grad_accum``.
    - ``warmup``: a float in [0, 1) is a fraction of all steps; an int is a number of steps.
    - ``max_grad_norm``: clip the global grad norm to this; None disables clipping.
    - ``weight_decay`` applies to matrices only, not to biases or norm scales (1-D params).
    - ``checkpoint_every``: save a resumable checkpoint every N steps (0 = only at the end of
      training when ``output_dir`` is set); the newest ``keep_checkpoints`` are kept.
    - ``parallel``: how a run launched by torchrun spreads over its processes (see
      ``petkit.train.distributed``); ignored in a single process.
    """

    lr: float = 1e-3
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int | None = None  # default: batch_size
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    warmup: float | int = 0.0
    schedule: str = "linear"
    weight_decay: float = 0.0
    seed: int = 0
    eval_every_epoch: bool = True
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    output_dir: str | None = None
    parallel: str = "ddp"  # under torchrun: "ddp" (every rank holds the whole base) or "fsdp" (frozen weights sharded)

    def __post_init__(self) -> None:
        _number("lr", self.lr, minimum=0, strict=True)
        int_at_least("epochs", self.epochs, minimum=1)
        if self.max_steps is not None:
            int_at_least("max_steps", self.max_steps, minimum=1)
        int_at_least("batch_size", self.batch_size, minimum=1)
        if self.eval_batch_size is not None:
            int_at_least("eval_batch_size", self.eval_batch_size, minimum=1)
        int_at_least("grad_accum", self.grad_accum, minimum=1)
        if self.max_grad_norm is not None:
            _number("max_grad_norm", self.max_grad_norm, minimum=0, strict=True)
        if isinstance(self.warmup, float):
            if not 0 <= self.warmup < 1:
                raise ConfigError(f"warmup as a ratio must be in [0, 1), got {self.warmup} (use an int for steps)")
        else:
            int_at_least("warmup", self.warmup, minimum=0)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _number("weight_decay", self.weight_decay, minimum=0)
        int_at_least("seed", self.seed, minimum=0)
        if not isinstance(self.eval_every_epoch, bool):
            raise ConfigError(f"eval_every_epoch must be True or False, got {self.eval_every_epoch!r}")
        int_at_least("checkpoint_every", self.checkpoint_every, minimum=0)
        int_at_least("keep_checkpoints", self.keep_checkpoints, minimum=1)
        if self.parallel not in PARALLEL:
            raise ConfigError(f"parallel must be one of {', '.join(PARALLEL)}, got {self.parallel!r}")
        if self.checkpoint_every and not self.output_dir:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every} needs an output_dir to write checkpoints to")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a dict (JSON/YAML, `-t key=value`): an unknown key is a ConfigError naming the closest one."""
        return config_from_mapping(cls, values, where="train")


def _number(name: str, value, minimum: float, strict: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:  # NaN != NaN
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
