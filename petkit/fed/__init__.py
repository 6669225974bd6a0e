"""Federated tuning on Flower: only adapter tensors travel (FedPEFT). ``run_federated(FedJob(...))``
runs a job in Flower's simulation engine; see ``job.py`` for the settings."""

from .job import FedJob
from .run import run_federated

__all__ = ["FedJob", "run_federated"]
