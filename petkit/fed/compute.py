"""A client's compute, in FLOPs per example: counted once by torch's FlopCounterMode (matmuls, the
bulk of a transformer's work) on one training example padded to the job's max_length, then
multiplied by the examples a client processes."""

from __future__ import annotations

import json
from functools import lru_cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, batch: dict, backward: bool) -> float:
    """FLOPs of one forward (and backward of its loss); leaves no gradients behind."""
    with FlopCounterMode(display=False) as counter:
        out = model(**batch)
        if backward:
            out.loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def padded_example(prep, length: int) -> dict:
    """The first training example as a batch of one, its token tensors padded to `length`."""
    batch = prep.train.collate([prep.train[0]])
    return {k: torch.nn.functional.pad(v, (0, length - v.shape[1])) if torch.is_tensor(v) and v.dim() == 2
            and v.shape[1] < length else v for k, v in batch.items()}


@lru_cache(maxsize=2)
def whole_model_flops(job_json: str) -> float:
    """A FedPEFT client's training FLOPs per example: forward + backward of the whole adapted model."""
    from .setup import setup

    prep, am, _, _ = setup(job_json)
    return count_flops(am, padded_example(prep, json.loads(job_json)["max_length"]), backward=True)
