"""pFedPG's client side and personalised accuracy.

A pFedPG client receives its own prompt P_n, trains it with its private task head (kept in the
node's state between rounds, never sent) for ``local_steps`` steps, and replies with ΔP_n = P̃_n − P_n
only. Personalised accuracy of client n: the test accuracy of each class weighted by the share of
that class in the client's training data, Σ_c π_n(c)·acc(c), the same formula for every system (a
shared global model is scored per client the same way).
"""

from __future__ import annotations

from torch import nn

from petkit.core.errors import ConfigError

from .fedpeft import train_locally
from .job import FedJob
from .payload import State, load_trainable, trainable_state
from .setup import setup

HEAD_KEY = "petkit-private-head"


def prompt_key(am: nn.Module) -> str:
    """The trainable prompt's parameter name (the other trainables are the task head)."""
    names = [n for n, p in am.named_parameters() if p.requires_grad and n.startswith("model_deltas.")]
    if len(names) != 1:
        raise ConfigError(f"pFedPG needs exactly one trainable prompt tensor, found {names}")
    return names[0]


def _load_personal(job: FedJob, received: State, node_state) -> tuple[nn.Module, str, State]:
    """This client's model: the received prompt and its own head (the initial head in its first round)."""
    _, am, _, initial = setup(job.to_json())
    key = prompt_key(am)
    if set(received) != {"prompt"}:
        raise ConfigError(f"a pFedPG message carries one tensor named 'prompt', got {sorted(received)}")
    head = (dict(node_state[HEAD_KEY].to_torch_state_dict()) if HEAD_KEY in node_state
            else {k: v for k, v in initial.items() if k != key})
    load_trainable(am, {**head, key: received["prompt"]})
    return am, key, received["prompt"]


def client_round(job: FedJob, partition: int, server_round: int, received: State, node_state) -> tuple[State, int, float, dict]:
    """Tune (prompt, private head) locally; returns ({"delta": ΔP}, examples, last loss, metrics)."""
    from flwr.app import ArrayRecord

    am, key, sent = _load_personal(job, received, node_state)
    loss, metrics = train_locally(job, am, partition, server_round)
    tuned = trainable_state(am)
    node_state[HEAD_KEY] = ArrayRecord({k: v for k, v in tuned.items() if k != key})
    return {"delta": tuned[key] - sent}, len(setup(job.to_json()).parts[partition]), loss, metrics


def evaluate_client(job: FedJob, partition: int, received: State, node_state) -> float:
    from petkit.train import evaluate

    am, _, _ = _load_personal(job, received, node_state)
    prep, _, parts, _ = setup(job.to_json())
    per_class = evaluate(am, prep.test, prep.task, batch_size=64, per_class=True)["class_accuracy"]
    return personal_accuracy(per_class, label_shares(prep, parts[partition]))


def label_shares(prep, indices) -> list[float]:
    counts = [0] * prep.model.config.num_labels
    for i in indices:
        counts[prep.train.features[i]["labels"]] += 1
    return [c / len(indices) for c in counts]


def personal_accuracy(per_class: list[float], shares: list[float]) -> float:
    """Σ_c π(c)·acc(c) over the classes the test set has, π renormalised over them."""
    pairs = [(s, a) for s, a in zip(shares, per_class) if a == a and s > 0]  # a == a: not NaN
    total = sum(s for s, _ in pairs)
    return sum(s * a for s, a in pairs) / total if total else float("nan")
