"""LAE: Learning, Accumulation, Ensemble (Gao et al., ICCV 2023, arXiv 2303.10070).

- Learning, with the adaptation speed calibrated:
  - prefix compensation (`compensate`, prefixes only): the attention weights on the prefix are
    renormalised to sum to 1 (petkit's prefix method does it with `compensate: true`);
  - freeze-then-tune: in every task after the first, the online PET is frozen for the first
    `freeze_epochs` epochs and only the new classes' head rows train, then both train.
- Accumulation: from task 2 on, an offline PET, first a copy of the online one, follows it by an
  exponential moving average after every optimiser step: θ_off ← d·θ_off + (1 − d)·θ_on.
- Ensemble: at test time both experts run and `ensemble="max_prob"` takes the larger softmax
  probability per class (the released code). `ensemble="energy"` (our reading of the paper's
  framing, unverified) takes, per sample, the expert with the lower energy −logsumexp(logits).
The head is shared and not averaged.

PETs (`pet`), as in the released code but on every layer (the paper adapts ViT-B's blocks 0–4 of 12):
- "lora": rank 5 on the attention keys and values (alpha 5: scale 1; LAE's extra learnable scalars
  are left out);
- "adapter": a bottleneck of 5 parallel to attention (reads the attention block's input), down
  Kaiming-uniform, up zero;
- "prefix": 10 key/value tokens per layer, trained directly, init U(0, 0.01).
`adapter` replaces the preset with any petkit adapter config.

Defaults from the paper's code: d = 0.9999, 3 frozen epochs of 5. Both assume ~1000 steps per task; on
shorter tasks pick d so that 1/(1 − d), the EMA's memory in steps, spans a similar number of tasks.
"""

from __future__ import annotations

import torch

from petkit.core.errors import ConfigError

from .baselines import AdapterLearner
from .learner import register_learner

PETS = {
    "lora": {"method": "lora", "r": 5, "alpha": 5, "targets": ["attn.kv"]},  # the fused qkv layer where there is one
    "adapter": {"method": "bottleneck", "variant": "parallel", "bottleneck": 5, "init": "lora", "targets": ["attn.out"]},
    "prefix": {"method": "prefix", "num_virtual_tokens": 10, "projection": False},
}
ENSEMBLES = ("max_prob", "energy")


@register_learner
class LAE(AdapterLearner):
    name = "lae"

    def __init__(self, pet: str = "lora", adapter: dict | None = None, ema_decay: float = 0.9999,
                 freeze_epochs: int = 3, ensemble: str = "max_prob", compensate: bool = True):
        if pet not in PETS:
            raise ConfigError(f"pet must be one of {sorted(PETS)}, got {pet!r}")
        if not (isinstance(ema_decay, (int, float)) and 0 <= ema_decay < 1):
            raise ConfigError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
        if not (isinstance(freeze_epochs, int) and freeze_epochs >= 0):
            raise ConfigError(f"freeze_epochs must be a non-negative int, got {freeze_epochs!r}")
        if ensemble not in ENSEMBLES:
            raise ConfigError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
        preset = dict(PETS[pet], **({"compensate": bool(compensate)} if pet == "prefix" else {}))
        super().__init__(adapter=adapter or preset)
        self.pet, self.decay, self.freeze_epochs, self.ensemble = pet, float(ema_decay), freeze_epochs, ensemble

    def check(self, epochs):
        if self.freeze_epochs >= epochs:
            raise ConfigError(f"freeze_epochs={self.freeze_epochs} with epochs={epochs} leaves the PET frozen for every "
                              "task after the first; freeze fewer epochs than each task has")

    def setup(self, model, stream):
        super().setup(model, stream)
        self.add("online")
        if self.pet == "prefix" and self.adapter.method == "prefix":
            with torch.no_grad():  # LAE's prompt init
                for p in self._tensors("online"):
                    p.uniform_(0.0, 0.01)
        self.am.set_active("online")

    def _tensors(self, name: str) -> list[torch.nn.Parameter]:
        return [p for delta in self.am.deltas(name) for p in delta.parameters()]

    @property
    def has_offline(self) -> bool:
        return "offline" in self.am.adapters

    def begin_task(self, t):
        if t >= 1 and not self.has_offline:  # task 2 starts: the offline expert is the task-1 online PET
            self.am.add(self.adapter, "offline", trainable=False)
            with torch.no_grad():
                for off, on in zip(self._tensors("offline"), self._tensors("online")):
                    off.copy_(on)
            self.am.set_trainable("online", True)
            self.am.set_trainable("offline", False)
        self.am.set_active("online")

    def parameters(self, t):
        return self._tensors("online") + list(self.model.head.parameters())

    def begin_epoch(self, t, epoch):
        frozen = t > 0 and epoch < self.freeze_epochs
        for p in self._tensors("online"):
            p.requires_grad_(not frozen)

    def after_step(self, t):
        if not self.has_offline:
            return
        with torch.no_grad():
            for off, on in zip(self._tensors("offline"), self._tensors("online")):
                off.mul_(self.decay).add_(on, alpha=1 - self.decay)

    # -- prediction -------------------------------------------------------------------------------
    def expert_logits(self, name: str, batch: dict, classes: range) -> torch.Tensor:
        self.am.set_active(name)
        try:
            return self.model(batch["input_ids"], batch["attention_mask"])[:, classes.start:classes.stop]
        finally:
            self.am.set_active("online")

    def scores(self, batch, classes, task):
        online = self.expert_logits("online", batch, classes)
        if not self.has_offline:
            return online
        offline = self.expert_logits("offline", batch, classes)
        if self.ensemble == "max_prob":
            return torch.maximum(online.softmax(-1), offline.softmax(-1))
        pick_offline = (-offline.logsumexp(-1) < -online.logsumexp(-1))[:, None]
        return torch.where(pick_offline, offline.softmax(-1), online.softmax(-1))

    def report(self, t, row):
        """Each expert alone: the paper's ensemble ≥ offline ≥ online comparison."""
        online = row(lambda b, c, _task: self.expert_logits("online", b, c))
        offline = row(lambda b, c, _task: self.expert_logits("offline", b, c)) if self.has_offline else online
        return {"online": online, "offline": offline}

    def describe(self) -> str:
        return f"lae ({self.adapter.method}, d={self.decay}, freeze {self.freeze_epochs}, {self.ensemble})"
