"""SFPrompt's client round (Cao, Zhu & Gong 2024, arXiv 2407.17533): split federated prompt tuning.

The client holds the head (embeddings, soft prompts, the first ``head_layers`` layers) and the tail
(the last ``tail_layers`` layers, pooler and classifier); the server holds the frozen body. What the
client trains and FedAvg averages: the prompts and the tail. Each round, on the client:

1. pruning (local): EL2N scores ‖softmax(tail(head(x))) − onehot(y)‖₂ of every local example with the
   body skipped; the hardest ``keep`` share is kept (``prune="random"``: a random share, the ablation);
2. split training: ``local_steps`` steps on the kept examples across the cut (``Split.step``): the
   head's activations go to the server, the body's output comes back, the gradient at the body's
   output goes up and the gradient at the head's output comes back;
3. local-loss update: ``local_loss_steps`` more steps on the kept examples with the body skipped (no
   communication).

In this simulation the server's body runs in the client's process; what would cross the link is
counted (``Split.step``), and so is the client's own compute (FLOPs per example of the parts it runs,
measured once with torch's FlopCounterMode on an example padded to the job's max_length).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache

import torch
from torch.utils.data import Subset

from petkit.train.batching import batch_indices, epoch_order, iter_batches

from .compute import count_flops, padded_example
from .job import FedJob
from .payload import State, load_trainable, trainable_state
from .setup import setup
from .split import Split, el2n_scores, keep_hardest


def batches(data, collate, batch_size: int, steps: int, seed: int) -> Iterator[dict]:
    """`steps` shuffled batches, epoch after epoch."""
    epoch = 0
    while steps > 0:
        chunk = batch_indices(epoch_order(len(data), seed, epoch), batch_size)[:steps]
        yield from iter_batches(data, chunk, collate)
        steps, epoch = steps - len(chunk), epoch + 1


def client_round(job: FedJob, partition: int, server_round: int, global_state: State) -> tuple[State, int, float, dict]:
    """One client's round; returns (its trainable state, examples kept, last split-step loss, metrics)."""
    prep, am, parts, _ = setup(job.to_json())
    load_trainable(am, global_state)
    split = Split(am, job.head_layers, job.tail_layers)
    local, collate = Subset(prep.train, parts[partition]), prep.train.collate
    seed = job.seed * 100_003 + server_round * 1_009 + partition

    scored = len(local) if job.prune == "el2n" and job.keep < 1 else 0  # keep = 1: nothing to rank
    if scored:
        scores = el2n_scores(split, iter_batches(local, batch_indices(range(len(local)), 64), collate))
    else:  # the ablation: the same number of examples, drawn at random
        scores = torch.rand(len(local), generator=torch.Generator().manual_seed(seed)).tolist()
    kept = Subset(local, keep_hardest(scores, job.keep))

    params = [p for p in am.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=job.lr, weight_decay=0.0)

    def step() -> None:  # after a backward
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # as the trainer does for FedPEFT's clients
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    am.train()
    torch.manual_seed(seed)  # dropout: a client's round is a function of its inputs, as with the trainer
    sent, trained, loss = {"up": 0, "down": 0}, 0, float("nan")
    for batch in batches(kept, collate, job.batch_size, job.local_steps, seed):
        loss, link = split.step(batch)  # forward and backward across the cut
        step()
        sent = {way: sent[way] + link[way] for way in sent}
        trained += len(batch["labels"])
    with split.without_body() as model:
        for batch in batches(kept, collate, job.batch_size, job.local_loss_steps, seed + 1):
            model(**batch).loss.backward()
            step()
            trained += len(batch["labels"])

    per_example = client_flops(job.to_json())
    metrics = {"split-bytes-up": sent["up"], "split-bytes-down": sent["down"],
               "client-flops": per_example["scoring"] * scored + per_example["training"] * trained}
    return trainable_state(am), len(kept), float(loss), metrics


@lru_cache(maxsize=2)
def client_flops(job_json: str) -> dict[str, float]:
    """FLOPs per example of the client's parts (head + tail, body skipped): a scoring forward and a
    training forward + backward."""
    job = FedJob.from_dict(json.loads(job_json))
    prep, am, _, _ = setup(job_json)
    batch = padded_example(prep, job.max_length)
    with Split(am, job.head_layers, job.tail_layers).without_body() as model:
        return {"scoring": count_flops(model, batch, backward=False), "training": count_flops(model, batch, backward=True)}
