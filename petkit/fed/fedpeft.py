"""FedPEFT's client round: ``local_steps`` steps of petkit's trainer on the client's examples, from the
global trainable state (with FedProx's proximal term when the job sets ``proximal_mu``)."""

from __future__ import annotations

from torch import nn
from torch.utils.data import Subset

from petkit.train import TrainConfig, train

from .compute import whole_model_flops
from .job import FedJob
from .payload import State, load_trainable, trainable_state
from .setup import setup


class Proximal(nn.Module):
    """FedProx: the model's loss plus μ/2·‖θ − θ_global‖² over the trainable parameters."""

    def __init__(self, model: nn.Module, anchor: State, mu: float):
        super().__init__()
        self.model, self.mu = model, mu
        params = dict(model.named_parameters())
        self._pairs = [(params[name], value) for name, value in anchor.items()]  # matched once, not per forward

    def forward(self, **batch):
        out = self.model(**batch)
        prox = sum(((p - anchor) ** 2).sum() for p, anchor in self._pairs)
        out.loss = out.loss + 0.5 * self.mu * prox
        return out


def local_update(job: FedJob, partition: int, server_round: int, global_state: State) -> tuple[State, int, float, dict]:
    """Train one client's copy from the global state; returns (its state, its examples, its last loss, metrics)."""
    prep, am, parts, _ = setup(job.to_json())
    load_trainable(am, global_state)
    model = Proximal(am, global_state, job.proximal_mu) if job.proximal_mu else am
    loss, metrics = train_locally(job, model, partition, server_round)
    return trainable_state(am), len(parts[partition]), loss, metrics


def train_locally(job: FedJob, model: nn.Module, partition: int, server_round: int) -> tuple[float, dict]:
    """`local_steps` steps of the trainer on the client's data; (last loss, the client's FLOPs)."""
    prep, _, parts, _ = setup(job.to_json())
    cfg = TrainConfig(lr=job.lr, max_steps=job.local_steps, batch_size=job.batch_size, schedule="constant",
                      seed=job.seed * 100_003 + server_round * 1_009 + partition, eval_every_epoch=False)
    result = train(model, Subset(prep.train, parts[partition]), cfg, task=prep.task,
                   collate_fn=prep.train.collate, progress=False)
    # Examples trained: local_steps full batches (a short last batch of an epoch counts as full).
    flops = whole_model_flops(job.to_json()) * job.local_steps * min(job.batch_size, len(parts[partition]))
    return result.train_loss, {"client-flops": flops}
