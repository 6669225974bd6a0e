"""The server side: Flower's FedAvg strategy with petkit's checks, DP and byte accounting.

Flower samples the clients, sends the global state and collects the replies; petkit decides what is
averaged. A reply is rejected (logged with the reason, never averaged) when its tensor names, shapes
or values do not fit the global adapter; a client that fails or times out is logged as dropped. The
round completes with the accepted replies; with none, the global state stays as it was.
"""

from __future__ import annotations

import logging
import time

import torch

from .aggregate import dp_fedavg, fedavg
from .job import FedJob
from .payload import check_update

log = logging.getLogger("petkit.fed")


def make_strategy(job: FedJob):
    from flwr.app import ArrayRecord, MetricRecord
    from flwr.serverapp.strategy import FedAvg

    class PetkitFedAvg(FedAvg):
        def __init__(self):
            super().__init__(fraction_train=job.fraction, fraction_evaluate=0.0,
                             min_train_nodes=job.per_round, min_available_nodes=job.clients)
            self.rounds: list[dict] = []
            self.noise = torch.Generator().manual_seed(job.seed)
            self._global: dict | None = None

        def configure_train(self, server_round, arrays, config, grid):
            messages = list(super().configure_train(server_round, arrays, config, grid))
            self._global = dict(arrays.to_torch_state_dict())
            self._sent_at = time.perf_counter()
            self.rounds.append({"round": server_round, "sampled": len(messages),
                                "bytes_down": arrays.count_bytes() * len(messages), "bytes_up": 0,
                                "accepted": 0, "rejected": [], "dropped": []})
            return messages

        def aggregate_train(self, server_round, replies):
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
                examples = metrics["metrics"].get("num-examples") if "metrics" in metrics else None
                state = dict(arrays["arrays"].to_torch_state_dict()) if "arrays" in arrays else {}
                problem = check_update(self._global, state, examples)
                if problem:
                    record["rejected"].append({"node": node, "reason": problem})
                    log.warning("round %d: rejected the update of node %d: %s", server_round, node, problem)
                    continue
                accepted.append((state, float(examples), metrics["metrics"].get("train_loss", float("nan"))))
            record["accepted"] = len(accepted)
            if not accepted:
                return None, None
            if job.dp_clip is not None:
                new = dp_fedavg(self._global, [s for s, _, _ in accepted], job.dp_clip, job.dp_noise, self.noise)
            else:
                new = fedavg([(s, n) for s, n, _ in accepted])
            total = sum(n for _, n, _ in accepted)
            loss = sum(n * l for _, n, l in accepted) / total
            record["train_loss"] = loss
            return ArrayRecord(new), MetricRecord({"train_loss": loss, "num-examples": total})

    return PetkitFedAvg()
