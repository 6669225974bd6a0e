"""Partitioning one training set among federated clients: IID, or label-skewed by a Dirichlet draw.

Dirichlet(α) per label (Hsu et al. 2019, the usual non-IID benchmark partition): for each label, the
shares of its examples that go to the N clients are drawn from Dir(α·1_N); small α gives each client
few labels, large α approaches IID. Draws are repeated (new seed) until every client has at least
``min_size`` examples, as common benchmark code does, so no client is empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from petkit.core.errors import ConfigError
from petkit.data.splits import permutation


def iid(n_examples: int, n_clients: int, seed: int = 0) -> list[list[int]]:
    """Example indices per client: a seeded shuffle cut into near-equal parts."""
    _check(n_examples, n_clients)
    order = permutation(n_examples, seed, "federated-iid")
    return [sorted(order[c::n_clients]) for c in range(n_clients)]


def dirichlet(labels: Sequence[int], n_clients: int, alpha: float, seed: int = 0, min_size: int = 2,
              max_tries: int = 1000) -> list[list[int]]:
    """Example indices per client, label proportions drawn from Dir(alpha) independently per label."""
    _check(len(labels), n_clients)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise ConfigError(f"alpha (Dirichlet concentration) must be > 0, got {alpha!r}")
    if min_size * n_clients > len(labels):
        raise ConfigError(f"{len(labels)} examples cannot give {n_clients} clients {min_size} each")
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(i)
    for attempt in range(max_tries):
        rng = np.random.default_rng([seed, attempt])
        clients: list[list[int]] = [[] for _ in range(n_clients)]
        for label in sorted(by_label):
            members = [by_label[label][i] for i in rng.permutation(len(by_label[label]))]
            shares = rng.dirichlet([alpha] * n_clients)
            cuts = (np.cumsum(shares)[:-1] * len(members)).round().astype(int)
            for client, part in zip(clients, np.split(np.array(members, dtype=int), cuts)):
                client.extend(part.tolist())
        if min(len(c) for c in clients) >= min_size:
            return [sorted(c) for c in clients]
    raise ConfigError(f"no Dirichlet(alpha={alpha}) partition in {max_tries} draws gives each of {n_clients} clients "
                      f"{min_size} examples: raise alpha or lower the number of clients")


def partition_examples(labels: Sequence[int], n_clients: int, how: str, alpha: float, seed: int = 0) -> list[list[int]]:
    """Example indices per client, partitioned `how`: "dirichlet" (with `alpha`) or "iid"."""
    if how == "dirichlet":
        return dirichlet(labels, n_clients, alpha, seed=seed)
    return iid(len(labels), n_clients, seed=seed)


def label_histogram(labels: Sequence[int], parts: list[list[int]], n_labels: int) -> list[list[int]]:
    """Examples of each label per client (rows: clients)."""
    return [[sum(1 for i in part if labels[i] == k) for k in range(n_labels)] for part in parts]


def _check(n_examples: int, n_clients: int) -> None:
    if not isinstance(n_clients, int) or isinstance(n_clients, bool) or n_clients < 1:
        raise ConfigError(f"the number of clients must be a positive integer, got {n_clients!r}")
    if n_examples < n_clients:
        raise ConfigError(f"{n_examples} examples cannot be split over {n_clients} clients")
