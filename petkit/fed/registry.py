"""The registry of federated systems: one record per system, filled by ``register`` in
``petkit/fed/systems/*`` (imported by ``petkit/fed/__init__.py``), the way methods are registered in
``petkit/core/registry.py``. Everything that differs between systems is a field of its record, so the
rest of ``petkit.fed`` never asks which system it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from petkit.core.named_table import NamedTable


class ServerSide(Protocol):
    """What a system's server does in a round; ``petkit.fed.strategy`` runs it inside Flower's FedAvg."""

    def initial_state(self) -> dict:
        """The global state before round 1 (what Flower's ``initial_arrays`` carry)."""

    def outgoing(self, nodes: list[int]) -> dict[int, dict] | None:
        """What each sampled node is sent; None: every node gets the global state."""

    def expected_reply(self, sent: dict) -> dict:
        """The names and shapes a node's reply must have, given what it was sent."""

    def aggregate(self, global_state: dict, replies: list) -> tuple[dict, dict]:
        """(the new global state, metrics for the round's record) from the accepted ``payload.Reply``s."""


@dataclass(frozen=True)
class FedSystem:
    """What the federated engine needs to know about a system.

    settings: the FedJob fields only this system reads (the others are common to every system)
    check(job)                                    raises ConfigError for a job this system cannot run
    build_model(base, method_config, job) -> am   the adapted model every client trains
    client_train(job, partition, server_round, received, node_state) -> (state, examples, loss, metrics)
                                                  one client's round; node_state: Flower's per-node
                                                  RecordDict, kept between rounds
    server(job, setup) -> ServerSide              what is sent and how replies are aggregated
    client_evaluate(job, partition, received, node_state) -> accuracy
                                                  personal models, scored on each client after a round;
                                                  None: the server scores the global model itself
    save(report, job, out) -> Path                what the server keeps after the run; None: the global
                                                  adapter (``petkit.fed.report.save``)
    keeps: what ``save`` writes, in words
    """

    name: str
    title: str
    summary: str
    spec: str
    settings: tuple[str, ...]
    check: Callable
    build_model: Callable
    client_train: Callable
    server: Callable
    client_evaluate: Callable | None = None
    save: Callable | None = None
    keeps: str = "global adapter"


_SYSTEMS: NamedTable[FedSystem] = NamedTable(
    "federated system", lambda name, known: f"unknown federated system {name!r}: system must be one of {known}")


def register(system: FedSystem) -> FedSystem:
    return _SYSTEMS.add(system.name, system)


def get_system(name: str) -> FedSystem:
    return _SYSTEMS.get(name)


def all_systems() -> list[FedSystem]:
    return _SYSTEMS.all()
