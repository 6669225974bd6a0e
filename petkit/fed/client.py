"""The client side of federated tuning: a Flower ClientApp around petkit's adapter and trainer.

Each client (a Flower SuperNode with a partition id) receives the global trainable state, loads it
into its own copy of the adapted model, trains on its partition of the data and replies with its new
trainable state, its example count and its compute. How it trains depends on the job's system:
FedPEFT ``local_steps`` steps of the trainer (fedpeft.py), SFPrompt's split round (sfprompt.py),
pFedPG's personal round (personal.py, which also answers evaluation messages). The base model and the
data are prepared once per worker process (setup.py) and reused by every client that runs there.
"""

from __future__ import annotations

import json

import torch

from .fedpeft import local_update
from .job import FedJob
from .payload import State


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
