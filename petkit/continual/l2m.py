"""L2M, Learning-to-Modulate (Schmied et al., NeurIPS 2023): a pool of modulators, each with a key.
Every sample picks the entry whose key is closest to its query and runs with that entry's
modulators, through the engine's mixed-batch routing (`AdaptedModel.routing`), so one batch mixes
entries and only the entries picked in a step get gradients.

- pool: `pool_size` petkit adapters `pool0`, `pool1`, ... and a key κ_k ∈ R^d each (U(−1, 1); the
  rows of `model.l2m_keys`, so checkpoints hold them), d the width of the input embeddings.
  modulator "lora": LoRA r=8, alpha=16 (scaling 2) on attention q and v and on the MLP's
  up-projection. The official code's MLP LoRA reads the up-projection's *output* (a 4d→8→4d LoRA
  added before the activation); ours is a standard LoRA on the up-projection (it reads its input).
  On a model that fuses q, k and v in one layer (GPT-2) both act on that layer (LoRA: keys too; IA³:
  queries too, as PEFT's IA³ default for GPT-2).
  modulator "ia3": IA³ vectors on attention keys and values and on the FF activations (the input of
  the MLP's output layer).
- query: the masked mean of the sample's input token embeddings (the embedding table only, no extra
  forward pass), detached; similarity cos(q, κ_k); the entry is the argmax (top-1), per sample.
- count penalty (training, task > 0): sim ← ((sim + 1)/2) · inv_freq, where usage_k is the running
  mean over training batches of entry k's share of the batch, inv_freq ∝ 1/(usage + 1e-6) normalised
  to sum 1, refreshed at each task switch from the tasks before (the official code's
  `inv_counts_so_far`). Entries earlier tasks used are all but ruled out for a new task; without it,
  tasks with similar queries collapse onto one entry.
- loss: cross-entropy over the task's classes − pull_weight · mean_b cos(q_b, κ_{k*_b}) (the pull
  constraint, the only thing that trains the keys).
- inference: the plain cosine argmax (no penalty, and no task id even when the scenario gives one).

`report` records which entries each task's training and test samples picked (extra
"l2m_train_keys" and "l2m_test_keys"), to show the collapse without the penalty.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.errors import ConfigError
from petkit.core.mapping import int_at_least
from petkit.core.model import adapt
from petkit.core.roles import roles_of

from .baselines import AdapterLearner, adapter_config
from .learner import Learner, current_task_loss, register_learner

MODULATORS = {
    "lora": {"method": "lora", "r": 8, "alpha": 16, "targets": ["attn.q", "attn.v", "mlp.up"]},
    "ia3": {"method": "ia3", "targets": ["attn.kv", "mlp.out"], "feedforward": ["mlp.out"]},
}


@register_learner
class L2M(AdapterLearner):
    name = "l2m"

    def __init__(self, pool_size: int = 30, modulator: str = "lora", pull_weight: float = 0.5,
                 count_penalty: bool = True, **options):
        Learner.__init__(self, **options)  # refuses unknown options (and `adapter`: the modulator sets it)
        self.pool_size = int_at_least("pool_size", pool_size)
        if modulator not in MODULATORS:
            raise ConfigError(f"modulator must be one of {sorted(MODULATORS)}, got {modulator!r}")
        if isinstance(pull_weight, bool) or not isinstance(pull_weight, (int, float)) \
                or not 0 <= pull_weight < math.inf:
            raise ConfigError(f"pull_weight must be a number >= 0, got {pull_weight!r}")
        if not isinstance(count_penalty, bool):
            raise ConfigError(f"count_penalty must be true or false, got {count_penalty!r}")
        self.modulator, self.pull_weight, self.count_penalty = modulator, float(pull_weight), count_penalty
        self.adapter = adapter_config(MODULATORS[modulator])
        # Selection counts: usage (running mean of each entry's share of a training batch, every task
        # so far), the batches it averages, and each finished task's training picks.
        self.usage = torch.zeros(pool_size, dtype=torch.float64)
        self.batches_seen = 0
        self.train_keys: list[list[int]] = []
        self.task_counts = torch.zeros(pool_size, dtype=torch.long)
        self.inv_freq: torch.Tensor | None = None

    @staticmethod
    def entry(k: int) -> str:
        return f"pool{k}"

    def setup(self, model, stream):
        super().setup(model, stream)
        adapter = self.adapter
        if self.modulator == "lora" and "attn.q" not in roles_of(self.am.base).roles():
            # q, k and v fused in one layer (GPT-2's c_attn): the LoRA goes on that layer, keys included
            adapter = adapter_config({**MODULATORS["lora"], "targets": ["attn.qkv", "mlp.up"]})
        for k in range(self.pool_size):
            adapt(self.am, adapter, self.entry(k))
        for k in range(self.pool_size):  # set_trainable freezes the base, then thaws the one entry
            self.am.set_trainable(self.entry(k), True)
        width = self.am.get_input_embeddings().weight.shape[1]
        keys = torch.empty(self.pool_size, width, device=model.head.weight.device).uniform_(-1.0, 1.0)
        # On the classifier, so checkpoints hold it. One tensor, as in the official code: a key no sample
        # picks gets a zero gradient, though Adam's momentum still moves it a little after its last pick.
        model.l2m_keys = nn.Parameter(keys)

    # -- selection ----------------------------------------------------------------------------------
    def query(self, batch: dict) -> torch.Tensor:
        """(batch, d): the masked mean of the input token embeddings, in float32, without gradient."""
        with torch.no_grad():
            emb = self.am.get_input_embeddings()(batch["input_ids"]).float()
            mask = batch["attention_mask"].unsqueeze(-1).to(emb.dtype)
            return (emb * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def similarity(self, q: torch.Tensor) -> torch.Tensor:
        """(batch, pool) cosine similarity of each query with each key (differentiable in the keys)."""
        return F.normalize(q, dim=-1) @ F.normalize(self.model.l2m_keys.float(), dim=-1).T

    def select(self, q: torch.Tensor, penalised: bool) -> torch.Tensor:
        """The entry each sample picks: argmax of the cosine, or of the count-penalised score."""
        sim = self.similarity(q).detach()
        if penalised and self.count_penalty and self.inv_freq is not None:
            # (sim + 1)/2 keeps the score positive, so a lower inverse frequency always lowers it
            sim = (sim + 1) / 2 * self.inv_freq.to(sim.device)
        return sim.argmax(-1)

    def routed_logits(self, batch: dict, chosen: torch.Tensor) -> torch.Tensor:
        with self.am.routing([self.entry(k) for k in chosen.tolist()]):
            return self.model(batch["input_ids"], batch["attention_mask"])

    # -- training -----------------------------------------------------------------------------------
    def begin_task(self, t):
        self.task_counts = torch.zeros(self.pool_size, dtype=torch.long)
        # The task switch: the penalty reads the usage of tasks 0..t-1 and stays fixed during task t.
        if t > 0 and self.batches_seen > 0:
            inv = 1.0 / (self.usage + 1e-6)
            self.inv_freq = (inv / inv.sum()).float()
        else:
            self.inv_freq = None

    def loss(self, batch, t):
        q = self.query(batch)
        chosen = self.select(q, penalised=True)
        self._count(chosen)
        logits = self.routed_logits(batch, chosen)
        pull = self.similarity(q).gather(1, chosen[:, None]).mean()
        return current_task_loss(logits, batch["labels"], self.stream.classes_of(t)) - self.pull_weight * pull

    def _count(self, chosen: torch.Tensor) -> None:
        picks = torch.bincount(chosen.cpu(), minlength=self.pool_size)
        self.task_counts += picks
        self.batches_seen += 1
        self.usage += (picks.double() / len(chosen) - self.usage) / self.batches_seen

    def end_task(self, t, data, batches):
        self.train_keys = self.train_keys[:t] + [self.task_counts.tolist()]

    # -- prediction ---------------------------------------------------------------------------------
    def scores(self, batch, classes, task):
        chosen = self.select(self.query(batch), penalised=False)
        return self.routed_logits(batch, chosen)[:, classes.start:classes.stop]

    def report(self, t, row):
        """Which entries the training samples of task t picked, and the test samples of each task so far."""
        owner = torch.tensor([j for j, task in enumerate(self.stream.tasks) for _ in range(task.num_classes)])
        picks = torch.zeros(t + 1, self.pool_size, dtype=torch.long)

        def recording(batch, classes, task):
            chosen = self.select(self.query(batch), penalised=False)
            cell = owner[batch["labels"]] * self.pool_size + chosen.cpu()
            picks.view(-1).add_(torch.bincount(cell, minlength=picks.numel()))
            return self.routed_logits(batch, chosen)[:, classes.start:classes.stop]

        row(recording)
        return {"l2m_train_keys": histogram(self.train_keys[t]) if t < len(self.train_keys) else {},
                "l2m_test_keys": [histogram(p.tolist()) for p in picks]}

    # -- state --------------------------------------------------------------------------------------
    def extra_state(self):
        return {"usage": self.usage.tolist(), "batches_seen": self.batches_seen, "train_keys": self.train_keys}

    def load_extra_state(self, state):
        if "usage" in state:
            self.usage = torch.tensor(state["usage"], dtype=torch.float64)
        self.batches_seen = int(state.get("batches_seen", 0))
        self.train_keys = [list(c) for c in state.get("train_keys", [])]

    def describe(self):
        penalty = "" if self.count_penalty else ", no count penalty"
        return f"l2m ({self.pool_size} × {self.modulator}{penalty})"


def histogram(counts: list[int]) -> dict[str, int]:
    """{entry name: picks} for the entries picked at least once, most picked first."""
    order = sorted((k for k, n in enumerate(counts) if n), key=lambda k: (-counts[k], k))
    return {L2M.entry(k): int(counts[k]) for k in order}
