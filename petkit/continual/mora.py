"""MoRA's continual protocol (Lu et al. 2025, "Little by Little", arXiv 2506.21035; spec §7).

Every adapted layer holds a pool of rank-1 experts (petkit's `mora` method). Each task appends
`experts_per_task` new experts (rows of A, columns of B; B starts at zero), and the experts of earlier
tasks are frozen. Every token routes itself over all experts added so far by its own activations
a = A x (top `top_k` of the normalised scores, softmax with temperature τ, experts scoring below δ
pruned), so no task id is needed at inference.

The layers are built once with every task's experts (r = experts_per_task × tasks) and `live` marks
how many are in use; a gradient hook zeroes the frozen experts' gradients, so their values stay
exactly as their task left them (the optimiser is fresh per task, so they carry no momentum either).
The paper's k, τ, δ and rank per task were not available (spec §7): the defaults are ours.
"""

from __future__ import annotations

import torch

from petkit.core.errors import ConfigError

from .baselines import AdapterLearner, adapter_config
from .learner import register_learner


@register_learner
class ContinualMoRA(AdapterLearner):
    name = "mora"

    def __init__(self, experts_per_task: int = 4, top_k: int = 2, temperature: float = 1.0,
                 threshold: float | None = None, targets=()):
        if not (isinstance(experts_per_task, int) and experts_per_task >= 1):
            raise ConfigError(f"experts_per_task must be a positive int, got {experts_per_task!r}")
        super().__init__()
        self.per_task = experts_per_task
        # targets: () = the mora method's defaults (attention q and v, or the fused qkv layer)
        self.settings = {"method": "mora", "top_k": top_k, "temperature": temperature, "threshold": threshold,
                         "targets": list(targets), "r": experts_per_task}
        self.adapter = self._config(1)  # checks the settings now, before any model is built

    def _config(self, tasks: int):
        return adapter_config({**self.settings, "r": self.per_task * tasks})

    def setup(self, model, stream):
        super().setup(model, stream)
        self.adapter = self._config(len(stream.tasks))
        self.add("online")
        self.frozen = 0
        for delta in self.deltas():
            delta.A.register_hook(lambda g: self._mask(g, rows=True))
            delta.B.register_hook(lambda g: self._mask(g, rows=False))

    def deltas(self) -> list:
        """The mora layers of the adapter (its config has no head, so every delta is one)."""
        return [d for _, _, d in self.am.layers("online")]

    def _mask(self, grad: torch.Tensor, rows: bool) -> torch.Tensor:
        if self.frozen == 0:
            return grad
        grad = grad.clone()
        if rows:
            grad[: self.frozen] = 0
        else:
            grad[:, : self.frozen] = 0
        return grad

    def begin_task(self, t):
        self.frozen = self.per_task * t
        for delta in self.deltas():
            delta.live = self.per_task * (t + 1)

    def report(self, t, row):
        experts = self.per_task * (t + 1)
        layers = self.deltas()
        active = sum(min(d.k, experts) * (d.A.shape[1] + d.B.shape[0]) for d in layers)
        return {"experts_per_layer": experts, "active_parameters_per_token": active}

    def describe(self) -> str:
        return f"mora ({self.per_task} experts per task, top-{self.settings['top_k']})"
