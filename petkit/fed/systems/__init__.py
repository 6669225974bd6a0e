"""The federated systems, one module each; importing this package registers them (see
``petkit/fed/registry.py`` for what a system declares)."""

from . import fedavg, fedprox, pfedpg, sfprompt  # noqa: F401
