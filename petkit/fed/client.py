"""The client side of federated tuning: a Flower ClientApp around petkit's adapter and trainer.

Each simulated client (a Flower SuperNode with a partition id) receives the global trainable state,
loads it into its own copy of the adapted model, trains ``local_steps`` steps on its partition of the
data and replies with its new trainable state and its example count. The base model and the data
are prepared once per worker process and reused by every client that runs there.
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch
from torch import nn
from torch.utils.data import Subset

from .job import FedJob
from .payload import State, load_trainable, trainable_state


@lru_cache(maxsize=2)
def setup(job_json: str):
    """(prepared data and model, the adapted model, each client's example indices) for a job."""
    import petkit
    from petkit.pipeline import RunSpec, prepare

    from .partition import dirichlet, iid

    job = FedJob.from_dict(json.loads(job_json))
    spec = RunSpec(model=job.model, data=job.data, method=job.method, max_length=job.max_length,
                   max_train=job.max_train, max_eval=job.max_eval, seed=job.seed)
    prep = prepare(spec)
    am = petkit.adapt(prep.model, spec.method_config())
    labels = [f["labels"] for f in prep.train.features]
    parts = (dirichlet(labels, job.clients, job.alpha, seed=job.seed) if job.split == "dirichlet"
             else iid(len(labels), job.clients, seed=job.seed))
    return prep, am, parts


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


def local_update(job: FedJob, partition: int, server_round: int, global_state: State) -> tuple[State, int, float]:
    """Train one client's copy from the global state; returns (its state, its examples, its last loss)."""
    from petkit.train import TrainConfig, train

    prep, am, parts = setup(job.to_json())
    load_trainable(am, global_state)
    model = Proximal(am, global_state, job.proximal_mu) if job.proximal_mu else am
    cfg = TrainConfig(lr=job.lr, max_steps=job.local_steps, batch_size=job.batch_size, schedule="constant",
                      seed=job.seed * 100_003 + server_round * 1_009 + partition, eval_every_epoch=False)
    result = train(model, Subset(prep.train, parts[partition]), cfg, task=prep.task,
                   collate_fn=prep.train.collate, progress=False)
    return trainable_state(am), len(parts[partition]), result.train_loss


def misbehave(kind: str, state: State) -> State:
    """What a faulty client sends instead (see FedJob.faults)."""
    if kind == "drop":
        raise RuntimeError("client dropped out mid-round (a fault injected by FedJob.faults)")
    name = next(iter(state))
    if kind == "wrong_shape":
        return {**state, name: torch.zeros(*(s + 1 for s in state[name].shape))}
    if kind == "wrong_keys":
        return {f"other.{k}": v for k, v in state.items()}
    return {**state, name: torch.full_like(state[name], float("nan"))}


def client_app():
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        config = msg.content["config"]
        job = FedJob.from_dict(json.loads(config["petkit-job"]))
        partition = int(context.node_config["partition-id"])
        state, examples, loss = local_update(job, partition, int(config["server-round"]),
                                             dict(msg.content["arrays"].to_torch_state_dict()))
        if partition in job.faults:
            state = misbehave(job.faults[partition], state)
        reply = RecordDict({"arrays": ArrayRecord(state),
                            "metrics": MetricRecord({"num-examples": examples, "train_loss": loss})})
        return Message(reply, reply_to=msg)

    return app
