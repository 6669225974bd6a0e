"""The bottom layer of federated tuning, shared by every system: a job's data, model and client
partitions prepared once per process, a client's local training with petkit's trainer, and the seed
that makes a client's round a function of (job, round, client). Nothing here knows which system runs:
the job's system record builds the model."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple

from torch import nn
from torch.utils.data import Subset

from .compute import count_flops, padded_example
from .job import FedJob
from .partition import partition_examples
from .payload import State, load_trainable, trainable_state
from .registry import get_system


class Setup(NamedTuple):
    prep: object          # petkit.pipeline.Prepared: data, task, the base model
    am: nn.Module         # the adapted model every client of this process trains in turn
    parts: list           # each client's example indices
    initial: State        # the trainable state before any training (a new client's private head)


def setup(job: FedJob | str) -> Setup:
    """The data, model and partitions of a job (or of its JSON, as a client receives it), prepared
    once per process and reused by every client that runs there."""
    return _setup(FedJob.from_json(job) if isinstance(job, str) else job)


@lru_cache(maxsize=2)
def _setup(job: FedJob) -> Setup:
    from petkit.pipeline import prepare

    prep = prepare(job.run)
    am = get_system(job.system).build_model(prep.model, job.run.method_config(), job)
    labels = [f["labels"] for f in prep.train.features]
    parts = partition_examples(labels, job.clients, job.partition, job.alpha, seed=job.seed)
    return Setup(prep, am, parts, trainable_state(am))


def round_seed(job: FedJob, server_round: int, partition: int) -> int:
    """A client's seed for one round (data order, dropout)."""
    return job.seed * 100_003 + server_round * 1_009 + partition


def local_update(job: FedJob, partition: int, server_round: int, global_state: State, node_state=None,
                 objective: Callable[[nn.Module], nn.Module] | None = None) -> tuple[State, int, float, dict]:
    """Train one client's copy from the global state (``objective`` wraps the model to change its loss);
    returns (its state, its examples, its last loss, metrics). FedAvg's client round."""
    _, am, parts, _ = setup(job)
    load_trainable(am, global_state)
    loss, metrics = train_locally(job, objective(am) if objective else am, partition, server_round)
    return trainable_state(am), len(parts[partition]), loss, metrics


def train_locally(job: FedJob, model: nn.Module, partition: int, server_round: int) -> tuple[float, dict]:
    """`local_steps` steps of the trainer on the client's data; (last loss, the client's FLOPs)."""
    from petkit.train import TrainConfig, train

    prep, _, parts, _ = setup(job)
    cfg = TrainConfig(lr=job.lr, max_steps=job.local_steps, batch_size=job.batch_size, schedule="constant",
                      seed=round_seed(job, server_round, partition), eval_every_epoch=False)
    result = train(model, Subset(prep.train, parts[partition]), cfg, task=prep.task,
                   collate_fn=prep.train.collate, progress=False)
    # Examples trained: local_steps full batches (a short last batch of an epoch counts as full).
    flops = whole_model_flops(job) * job.local_steps * min(job.batch_size, len(parts[partition]))
    return result.train_loss, {"client-flops": flops}


@lru_cache(maxsize=2)
def whole_model_flops(job: FedJob) -> float:
    """A client's training FLOPs per example: forward + backward of the whole adapted model."""
    prep, am, _, _ = setup(job)
    return count_flops(am, padded_example(prep, job.max_length), backward=True)
