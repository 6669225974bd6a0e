"""The server side on Flower: its FedAvg strategy, through the public Strategy API only
(``configure_train``, ``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate``), with
petkit's checks and byte accounting around a system's ``ServerSide`` (``petkit/fed/registry.py``).

Flower samples the clients, sends the messages and collects the replies; the system decides what each
node is sent and what the replies become. A reply is rejected (logged with the reason, never used)
when its tensor names, shapes or values do not fit what was sent; a client that fails or times out is
logged as dropped. The round completes with the accepted replies; with none, the global state stays
as it was.
"""

from __future__ import annotations

import logging
import math
import time

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from .payload import Reply, check_update
from .registry import ServerSide

log = logging.getLogger("petkit.fed")

# Client metrics summed over a round's accepted replies into the round's record.
SUMMED = {"client-flops": "client_flops", "split-bytes-up": "split_bytes_up", "split-bytes-down": "split_bytes_down"}


class PetkitStrategy(FedAvg):
    """FedAvg's sampling and messaging; ``server`` decides the content. ``rounds`` collects a record
    per round (sampled, accepted, rejected and dropped clients, bytes each way, summed client metrics).
    With ``evaluate_on_clients`` (personal models) every client scores its model after each round."""

    def __init__(self, job, server: ServerSide, evaluate_on_clients: bool = False):
        super().__init__(fraction_train=job.fraction, fraction_evaluate=1.0 if evaluate_on_clients else 0.0,
                         min_train_nodes=job.per_round, min_available_nodes=job.clients,
                         min_evaluate_nodes=job.clients if evaluate_on_clients else 2)
        self.server, self.clients, self.evaluate_on_clients = server, job.clients, evaluate_on_clients
        self.rounds: list[dict] = []
        self._global: dict = {}  # the global state of this round
        self._sent: dict[int, dict] = {}  # what each node was sent this round, to check its reply against

    def configure_train(self, server_round, arrays, config, grid):
        messages = self._address(super().configure_train(server_round, arrays, config, grid))
        self._global = dict(arrays.to_torch_state_dict())
        self._sent = {m.metadata.dst_node_id: dict(m.content["arrays"].to_torch_state_dict()) for m in messages}
        self._sent_at = time.perf_counter()
        self.rounds.append({"round": server_round, "sampled": len(messages),
                            "bytes_down": sum(m.content["arrays"].count_bytes() for m in messages), "bytes_up": 0,
                            "accepted": 0, "rejected": [], "dropped": []})
        return messages

    def configure_evaluate(self, server_round, arrays, config, grid):
        messages = self._address(super().configure_evaluate(server_round, arrays, config, grid))
        if messages:
            self.rounds[-1]["bytes_down"] += sum(m.content["arrays"].count_bytes() for m in messages)
        return messages

    def _address(self, messages) -> list:
        """Flower's messages, each carrying what the system sends its node (the same global state for all
        unless the system says otherwise)."""
        messages = list(messages)
        contents = self.server.outgoing([m.metadata.dst_node_id for m in messages]) if messages else None
        if contents is None:
            return messages
        return [Message(RecordDict({"arrays": ArrayRecord(contents[m.metadata.dst_node_id]),
                                    "config": m.content["config"]}),
                        message_type=m.metadata.message_type, dst_node_id=m.metadata.dst_node_id) for m in messages]

    def aggregate_train(self, server_round, replies):
        accepted = self._checked_replies(server_round, replies)
        if not accepted:
            return None, None
        state, metrics = self.server.aggregate(self._global, accepted)
        self.rounds[-1].update(metrics)
        return ArrayRecord(state), MetricRecord({"train_loss": self.rounds[-1]["train_loss"],
                                                 "num-examples": sum(r.examples for r in accepted), **metrics})

    def _checked_replies(self, server_round, replies) -> list[Reply]:
        """Every reply that fits what its node was sent; logs the others."""
        record, accepted = self.rounds[-1], []
        record["seconds"] = round(time.perf_counter() - self._sent_at, 2)  # send to last reply
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                record["dropped"].append({"node": node, "reason": msg.error.reason[-300:]})
                log.warning("round %d: node %d dropped: %s", server_round, node, msg.error.reason[-200:])
                continue
            arrays, metrics = msg.content.array_records, msg.content.metric_records
            record["bytes_up"] += sum(a.count_bytes() for a in arrays.values())
            metrics = dict(metrics["metrics"]) if "metrics" in metrics else {}
            state = dict(arrays["arrays"].to_torch_state_dict()) if "arrays" in arrays else {}
            expected = self.server.expected_reply(self._sent[node]) if node in self._sent else {}
            problem = check_update(expected, state, metrics.get("num-examples"))
            if problem:
                record["rejected"].append({"node": node, "reason": problem})
                log.warning("round %d: rejected the update of node %d: %s", server_round, node, problem)
                continue
            accepted.append(Reply(node, state, float(metrics["num-examples"]), metrics))
        record["accepted"] = len(accepted)
        for key, name in SUMMED.items():
            if any(key in r.metrics for r in accepted):
                record[name] = sum(r.metrics.get(key, 0) for r in accepted)
        if accepted:
            total = sum(r.examples for r in accepted)
            record["train_loss"] = sum(r.examples * r.metrics.get("train_loss", math.nan) for r in accepted) / total
        return accepted

    def aggregate_evaluate(self, server_round, replies):
        """Personal models: each client's personalised accuracy into the round's record."""
        if not self.evaluate_on_clients:
            return super().aggregate_evaluate(server_round, replies)
        personal = {}
        for msg in replies:
            if msg.has_error():
                log.warning("round %d: node %d failed its evaluation: %s", server_round,
                            msg.metadata.src_node_id, msg.error.reason[-200:])
                continue
            metrics = msg.content["metrics"]
            personal[int(metrics["partition"])] = float(metrics["personal-accuracy"])
        self.rounds[-1]["personal"] = [personal.get(i) for i in range(self.clients)]
        return MetricRecord({"personal-accuracy": sum(personal.values()) / len(personal)}) if personal else None
