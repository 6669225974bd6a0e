"""FedProx (Li et al. 2020): FedAvg whose clients add μ/2·‖θ − θ_global‖² over the trainable
parameters to their loss, so heterogeneous clients drift less from the global adapter. The server
side, DP included, is FedAvg's."""

from __future__ import annotations

from torch import nn

from petkit.core.errors import ConfigError

from ..local import local_update
from ..payload import State
from ..registry import FedSystem, register
from .fedavg import DP_SETTINGS, Averaging, build_model


class Proximal(nn.Module):
    """FedProx: the model's loss plus μ/2·‖θ − θ_global‖² over the trainable parameters."""

    def __init__(self, model: nn.Module, anchor: State, mu: float):
        super().__init__()
        self.model, self.mu = model, mu
        params = dict(model.named_parameters())
        self._pairs = [(params[name], value) for name, value in anchor.items()]  # matched once, not per forward

    def forward(self, **batch):
        out = self.model(**batch)
        prox = sum(((p - anchor) ** 2).sum() for p, anchor in self._pairs)
        out.loss = out.loss + 0.5 * self.mu * prox
        return out


def client_train(job, partition: int, server_round: int, received: State, node_state=None):
    return local_update(job, partition, server_round, received,
                        objective=lambda am: Proximal(am, received, job.proximal_mu))


def check(job) -> None:
    if not job.proximal_mu > 0:
        raise ConfigError(f"fedprox needs proximal_mu > 0 (its μ), got {job.proximal_mu}")


SYSTEM = register(FedSystem(
    name="fedprox", title="FedProx", spec="Li et al. 2020 (MLSys)",
    summary="FedAvg with a proximal term μ/2·‖θ − θ_global‖² in each client's loss",
    settings=("proximal_mu", *DP_SETTINGS), check=check, build_model=build_model, client_train=client_train,
    server=Averaging,
))
