"""Federated tuning on Flower: only adapter tensors travel (FedPEFT). ``run_federated(FedJob(...))``
runs a job in Flower's simulation engine; see ``job.py`` for the settings and ``systems/`` for the
federated systems (FedAvg, FedProx, SFPrompt, pFedPG), one module each, registered in ``registry.py``.

Imports point down: run, client, deploy and report → strategy, local and the registry; each system
→ local (setup, local training, seeds) → job → registry; the small helpers (payload, aggregate,
partition, compute, scoring, split_learning) import none of these.
"""

from . import systems  # noqa: F401  (importing registers the built-in systems)
from .job import FedJob
from .run import run_federated

__all__ = ["FedJob", "run_federated"]
