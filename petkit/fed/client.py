"""The client side of federated tuning: a Flower ClientApp around petkit's adapter and trainer.

Each client (a Flower SuperNode with a partition id) receives the global trainable state, loads it
into its own copy of the adapted model, trains on its partition of the data and replies with its new
trainable state, its example count and its compute. How it trains depends on the job's system:
FedPEFT ``local_steps`` steps of the trainer (here), SFPrompt's split round (sfprompt.py), pFedPG's
personal round (personal.py, which also answers evaluation messages). The base model and the data are
prepared once per worker process and reused by every client that runs there.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.data import Subset

from .job import FedJob
from .payload import State, load_trainable, trainable_state


class Setup(NamedTuple):
    prep: object          # petkit.pipeline.Prepared: data, task, the base model
    am: nn.Module         # the adapted model every client of this process trains in turn
    parts: list           # each client's example indices
    initial: State        # the trainable state before any training (a new client's private head)


@lru_cache(maxsize=2)
def setup(job_json: str) -> Setup:
    """The data, model and partition of a job, prepared once per process."""
    import petkit
    from petkit.pipeline import RunSpec, prepare

    from .partition import dirichlet, iid
    from .sfprompt import adapted

    job = FedJob.from_dict(json.loads(job_json))
    spec = RunSpec(model=job.model, data=job.data, method=job.method, max_length=job.max_length,
                   max_train=job.max_train, max_eval=job.max_eval, seed=job.seed)
    prep = prepare(spec)
    am = (adapted(prep.model, spec.method_config(), job.tail_layers) if job.system == "sfprompt"
          else petkit.adapt(prep.model, spec.method_config()))
    labels = [f["labels"] for f in prep.train.features]
    parts = (dirichlet(labels, job.clients, job.alpha, seed=job.seed) if job.split == "dirichlet"
             else iid(len(labels), job.clients, seed=job.seed))
    return Setup(prep, am, parts, trainable_state(am))


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
    from petkit.train import TrainConfig, train

    from .compute import whole_model_flops

    prep, _, parts, _ = setup(job.to_json())
    cfg = TrainConfig(lr=job.lr, max_steps=job.local_steps, batch_size=job.batch_size, schedule="constant",
                      seed=job.seed * 100_003 + server_round * 1_009 + partition, eval_every_epoch=False)
    result = train(model, Subset(prep.train, parts[partition]), cfg, task=prep.task,
                   collate_fn=prep.train.collate, progress=False)
    # Examples trained: local_steps full batches (a short last batch of an epoch counts as full).
    flops = whole_model_flops(job.to_json()) * job.local_steps * min(job.batch_size, len(parts[partition]))
    return result.train_loss, {"client-flops": flops}


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

    from . import personal, sfprompt

    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        config = msg.content["config"]
        job = FedJob.from_dict(json.loads(config["petkit-job"]))
        partition, server_round = int(context.node_config["partition-id"]), int(config["server-round"])
        received = dict(msg.content["arrays"].to_torch_state_dict())
        if job.system == "pfedpg":
            state, examples, loss, metrics = personal.client_round(job, partition, server_round, received, context.state)
        else:
            update = sfprompt.client_round if job.system == "sfprompt" else local_update
            state, examples, loss, metrics = update(job, partition, server_round, received)
        if partition in job.faults:
            state = misbehave(job.faults[partition], state)
        reply = RecordDict({"arrays": ArrayRecord(state),
                            "metrics": MetricRecord({"num-examples": examples, "train_loss": loss, **metrics})})
        return Message(reply, reply_to=msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        """pFedPG's personalised evaluation: the generated prompt with this client's private head."""
        torch.set_num_threads(1)
        job = FedJob.from_dict(json.loads(msg.content["config"]["petkit-job"]))
        partition = int(context.node_config["partition-id"])
        accuracy = personal.evaluate_client(job, partition, dict(msg.content["arrays"].to_torch_state_dict()),
                                            context.state)
        return Message(RecordDict({"metrics": MetricRecord({"personal-accuracy": accuracy, "partition": partition,
                                                            "num-examples": 1})}), reply_to=msg)

    return app
