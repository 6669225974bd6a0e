"""FedAvg over adapters (FedPEFT): every client trains the adapter (and task head) for ``local_steps``
steps from the global state; the server averages the replies weighted by their example counts
(McMahan et al. 2017) or, with ``dp_clip``, takes DP-FedAvg's clipped and noised uniform mean
(McMahan et al. 2018; ``petkit/fed/aggregate.py``). Only the trainable tensors travel."""

from __future__ import annotations

import torch

from petkit.core.errors import ConfigError
from petkit.core.model import adapt

from ..aggregate import dp_fedavg, fedavg
from ..local import local_update
from ..payload import State, trainable_state
from ..registry import FedSystem, register

DP_SETTINGS = ("dp_clip", "dp_noise", "dp_delta")


def build_model(base, method_config, job):
    return adapt(base, method_config)


def check(job) -> None:
    if job.proximal_mu:
        raise ConfigError(f"proximal_mu is FedProx's μ: use system fedprox (or leave system unset), "
                          f"not fedavg, with proximal_mu={job.proximal_mu}")


class Averaging:
    """The server side of FedAvg (and of FedProx and SFPrompt, which average the same way): the
    global state goes to every sampled node; the replies are averaged."""

    def __init__(self, job, setup):
        self.job, self.am = job, setup.am
        self.noise = torch.Generator().manual_seed(job.seed)  # DP's noise: one stream for the whole run

    def initial_state(self) -> State:
        return trainable_state(self.am)

    def outgoing(self, nodes: list[int]) -> None:
        return None

    def expected_reply(self, sent: State) -> State:
        return sent

    def aggregate(self, global_state: State, replies: list) -> tuple[State, dict]:
        job = self.job
        if job.dp_clip is None:
            return fedavg([(r.state, r.examples) for r in replies]), {}
        return dp_fedavg(global_state, [r.state for r in replies], job.dp_clip, job.dp_noise, self.noise), {}


SYSTEM = register(FedSystem(
    name="fedavg", title="FedAvg", spec="McMahan et al. 2017; DP-FedAvg: McMahan et al. 2018",
    summary="adapter-only FedAvg: clients train the adapter and head, the server averages them "
            "(optional client-level DP)",
    settings=DP_SETTINGS, check=check, build_model=build_model, client_train=local_update, server=Averaging,
))
