"""Classification requests for many adapters in one forward: every waiting job's texts become rows of
one padded batch, row i routed through its job's adapter (the mixed-adapter forward), heads included.

All adapters served by one classifier share the base's head size (their heads are copies of it), so
the logits of every row have the same width; probabilities are a softmax over them (a sigmoid for
multi-label models).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch


@dataclasses.dataclass
class ClassifyJob:
    ids: list[list[int]]            # one token list per input text
    emit: Callable[[str, object], None]
    adapter: str | None = None
    cancelled: bool = False
    arrived: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(map(len, self.ids))


class Classifier:
    busy = False  # a job finishes in the forward that admits it
    size = 0

    def __init__(self, model, pad_id: int, multi_label: bool, metrics=None):
        self.model, self.pad_id, self.multi_label, self.metrics = model, pad_id, multi_label, metrics

    @torch.no_grad()
    def admit(self, jobs: list[ClassifyJob]) -> None:
        rows = [(job, ids) for job in jobs for ids in job.ids]
        width = max(len(ids) for _, ids in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (_, ids) in enumerate(rows):  # right padding: encoders and decoder classifiers both read the mask
            input_ids[i, :len(ids)] = torch.tensor(ids)
            mask[i, :len(ids)] = 1
        adapters = [job.adapter for job, _ in rows]
        if self.metrics is not None:
            self.metrics.observe_forward("classify", adapters)
        logits = self.model(input_ids=input_ids, attention_mask=mask, adapter_names=adapters).logits.float()
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, -1)
        start = 0
        for job in jobs:
            job.emit("result", probs[start:start + len(job.ids)].tolist())
            job.emit("done", "stop")
            start += len(job.ids)

    def step(self) -> None:  # pragma: no cover - never busy
        pass

    def abandon(self) -> list:
        return []
