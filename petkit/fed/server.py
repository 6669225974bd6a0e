"""The server side: Flower's FedAvg strategy with petkit's checks, DP and byte accounting, and
pFedPG's strategy (per-client prompts from the generator, personalised evaluation on the clients).

Flower samples the clients, sends the messages and collects the replies; petkit decides what is
averaged. A reply is rejected (logged with the reason, never used) when its tensor names, shapes or
values do not fit what was sent; a client that fails or times out is logged as dropped. The round
completes with the accepted replies; with none, the global state stays as it was.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from .aggregate import dp_fedavg, fedavg
from .job import FedJob
from .payload import check_update

log = logging.getLogger("petkit.fed")

# Client metrics summed over a round's accepted replies into the round's record.
SUMMED = {"client-flops": "client_flops", "split-bytes-up": "split_bytes_up", "split-bytes-down": "split_bytes_down"}


def make_strategy(job: FedJob):
    from flwr.app import ArrayRecord, MetricRecord
    from flwr.serverapp.strategy import FedAvg

    class PetkitFedAvg(FedAvg):
        def __init__(self, fraction_evaluate: float = 0.0):
            super().__init__(fraction_train=job.fraction, fraction_evaluate=fraction_evaluate,
                             min_train_nodes=job.per_round, min_available_nodes=job.clients,
                             min_evaluate_nodes=job.clients if fraction_evaluate else 2)
            self.rounds: list[dict] = []
            self.noise = torch.Generator().manual_seed(job.seed)
            self._sent: dict[int, dict] = {}  # what each node was sent this round, to check its reply against

        def configure_train(self, server_round, arrays, config, grid):
            messages = list(super().configure_train(server_round, arrays, config, grid))
            self._sent = {m.metadata.dst_node_id: dict(m.content["arrays"].to_torch_state_dict()) for m in messages}
            self._sent_at = time.perf_counter()
            self.rounds.append({"round": server_round, "sampled": len(messages),
                                "bytes_down": sum(m.content["arrays"].count_bytes() for m in messages), "bytes_up": 0,
                                "accepted": 0, "rejected": [], "dropped": []})
            return messages

        def checked_replies(self, server_round, replies, reference=None) -> list[tuple[int, dict, float, dict]]:
            """(node, state, examples, metrics) of every reply that fits; logs the others."""
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
                expected = reference(node) if reference else self._sent.get(node, {})
                problem = check_update(expected, state, metrics.get("num-examples"))
                if problem:
                    record["rejected"].append({"node": node, "reason": problem})
                    log.warning("round %d: rejected the update of node %d: %s", server_round, node, problem)
                    continue
                accepted.append((node, state, float(metrics["num-examples"]), metrics))
            record["accepted"] = len(accepted)
            for key, name in SUMMED.items():
                if any(key in m for *_, m in accepted):
                    record[name] = sum(m.get(key, 0) for *_, m in accepted)
            if accepted:
                total = sum(n for _, _, n, _ in accepted)
                record["train_loss"] = sum(n * m.get("train_loss", math.nan) for _, _, n, m in accepted) / total
            return accepted

        def aggregate_train(self, server_round, replies):
            accepted = self.checked_replies(server_round, replies)
            if not accepted:
                return None, None
            states = [(s, n) for _, s, n, _ in accepted]
            if job.dp_clip is not None:
                new = dp_fedavg(next(iter(self._sent.values())), [s for s, _ in states], job.dp_clip, job.dp_noise,
                                self.noise)
            else:
                new = fedavg(states)
            return ArrayRecord(new), MetricRecord({"train_loss": self.rounds[-1]["train_loss"],
                                                   "num-examples": sum(n for _, n in states)})

    if job.system != "pfedpg":
        return PetkitFedAvg()
    return _pfedpg_strategy(job, PetkitFedAvg)


def _pfedpg_strategy(job: FedJob, base):
    """pFedPG: each sampled client gets its own generated prompt; replies are prompt changes ΔP_n, one
    generator step per round; every client evaluates its personal model after the round."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from .setup import setup
    from .personal import prompt_key
    from .pfedpg import PromptGenerator, PromptServer

    am = setup(job.to_json()).am
    length, width = dict(am.named_parameters())[prompt_key(am)].shape
    generator = PromptGenerator(job.clients, length, width, heads=job.generator_heads, seed=job.seed)

    class PFedPG(base):
        def __init__(self):
            super().__init__(fraction_evaluate=1.0)
            self.server = PromptServer(generator, lr=job.server_lr)
            self.index: dict[int, int] = {}  # node id → its descriptor

        def _construct_messages(self, record, node_ids, message_type):
            for node in sorted(node_ids):  # a node keeps the descriptor it is first given
                if node not in self.index and len(self.index) == job.clients:
                    raise RuntimeError(f"more nodes than the job's {job.clients} clients joined: no descriptor left")
                self.index.setdefault(node, len(self.index))
            prompts = self.server.prompts([self.index[n] for n in node_ids])
            return [Message(RecordDict({"arrays": ArrayRecord({"prompt": p}), "config": record["config"]}),
                            message_type=message_type, dst_node_id=n) for n, p in zip(node_ids, prompts)]

        def aggregate_train(self, server_round, replies):
            shape = lambda node: {"delta": self._sent[node]["prompt"]}  # noqa: E731 — ΔP has the prompt's shape
            accepted = self.checked_replies(server_round, replies, reference=shape)
            if not accepted:
                return None, None
            loss = self.server.step([self.index[node] for node, *_ in accepted], [s["delta"] for _, s, _, _ in accepted])
            self.rounds[-1]["generator_loss"] = loss
            return ArrayRecord(generator.state_dict()), MetricRecord({"generator_loss": loss})

        def configure_evaluate(self, server_round, arrays, config, grid):
            messages = list(super().configure_evaluate(server_round, arrays, config, grid))
            self.rounds[-1]["bytes_down"] += sum(m.content["arrays"].count_bytes() for m in messages)
            return messages

        def aggregate_evaluate(self, server_round, replies):
            personal = {}
            for msg in replies:
                if msg.has_error():
                    log.warning("round %d: node %d failed its evaluation: %s", server_round,
                                msg.metadata.src_node_id, msg.error.reason[-200:])
                    continue
                metrics = msg.content["metrics"]
                personal[int(metrics["partition"])] = float(metrics["personal-accuracy"])
            self.rounds[-1]["personal"] = [personal.get(i) for i in range(job.clients)]
            return MetricRecord({"personal-accuracy": sum(personal.values()) / len(personal)}) if personal else None

    return PFedPG()
