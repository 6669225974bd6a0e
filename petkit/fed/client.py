"""The client side of federated tuning: one Flower ClientApp for every system.

Each client (a Flower SuperNode with a partition id) receives what the server sent it, runs its
system's round (``FedSystem.client_train``: FedAvg's local steps, SFPrompt's split-learning round,
pFedPG's personal round) and replies with its new state, its example count and its metrics. A system
with personal models also answers evaluation messages (``FedSystem.client_evaluate``). The base model
and the data are prepared once per worker process and reused by every client that runs there.
"""

from __future__ import annotations

import torch

from petkit.core.errors import ConfigError

from .job import FedJob
from .payload import State
from .registry import get_system


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
        job = FedJob.from_json(config["petkit-job"])
        partition, server_round = int(context.node_config["partition-id"]), int(config["server-round"])
        received = dict(msg.content["arrays"].to_torch_state_dict())
        state, examples, loss, metrics = get_system(job.system).client_train(job, partition, server_round, received,
                                                                             context.state)
        if partition in job.faults:
            state = misbehave(job.faults[partition], state)
        reply = RecordDict({"arrays": ArrayRecord(state),
                            "metrics": MetricRecord({"num-examples": examples, "train_loss": loss, **metrics})})
        return Message(reply, reply_to=msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        """A personal model's evaluation on its client (pFedPG: the generated prompt with the private head)."""
        torch.set_num_threads(1)
        job = FedJob.from_json(msg.content["config"]["petkit-job"])
        evaluate = get_system(job.system).client_evaluate
        if evaluate is None:
            raise ConfigError(f"system {job.system} scores its global model on the server, not on the clients")
        partition = int(context.node_config["partition-id"])
        accuracy = evaluate(job, partition, dict(msg.content["arrays"].to_torch_state_dict()), context.state)
        return Message(RecordDict({"metrics": MetricRecord({"personal-accuracy": accuracy, "partition": partition,
                                                            "num-examples": 1})}), reply_to=msg)

    return app
