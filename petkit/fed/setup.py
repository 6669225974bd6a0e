"""What a worker process prepares once for a federated job and reuses for every client that runs
there: the data, the adapted model and each client's share of the examples."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import NamedTuple

from torch import nn

from petkit.core.model import adapt
from petkit.pipeline import RunSpec, prepare

from .job import FedJob
from .partition import dirichlet, iid
from .payload import State, trainable_state
from .split import adapted


class Setup(NamedTuple):
    prep: object          # petkit.pipeline.Prepared: data, task, the base model
    am: nn.Module         # the adapted model every client of this process trains in turn
    parts: list           # each client's example indices
    initial: State        # the trainable state before any training (a new client's private head)


@lru_cache(maxsize=2)
def setup(job_json: str) -> Setup:
    """The data, model and partition of a job, prepared once per process."""
    job = FedJob.from_dict(json.loads(job_json))
    spec = RunSpec(model=job.model, data=job.data, method=job.method, max_length=job.max_length,
                   max_train=job.max_train, max_eval=job.max_eval, seed=job.seed)
    prep = prepare(spec)
    am = (adapted(prep.model, spec.method_config(), job.tail_layers) if job.system == "sfprompt"
          else adapt(prep.model, spec.method_config()))
    labels = [f["labels"] for f in prep.train.features]
    parts = (dirichlet(labels, job.clients, job.alpha, seed=job.seed) if job.split == "dirichlet"
             else iid(len(labels), job.clients, seed=job.seed))
    return Setup(prep, am, parts, trainable_state(am))
