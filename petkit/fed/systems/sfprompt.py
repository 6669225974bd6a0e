"""SFPrompt (Cao, Zhu & Gong 2024, arXiv 2407.17533): split federated prompt tuning.

The client holds the head (embeddings, soft prompts, the first ``head_layers`` layers) and the tail
(the last ``tail_layers`` layers, pooler and classifier); the server holds the frozen body. What the
client trains and FedAvg averages: the prompts and the tail. Each round, on the client:

1. pruning (local): EL2N scores ‖softmax(tail(head(x))) − onehot(y)‖₂ of every local example with the
   body skipped; the hardest ``keep`` share is kept (``prune="random"``: a random share, the ablation);
2. split learning: ``local_steps`` steps on the kept examples across the cut (``Split.step``): the
   head's activations go to the server, the body's output comes back, the gradient at the body's
   output goes up and the gradient at the head's output comes back;
3. local-loss update: ``local_loss_steps`` more steps on the kept examples with the body skipped (no
   communication).

In this simulation the server's body runs in the client's process; what would cross the link is
counted (``Split.step``), and so is the client's own compute (FLOPs per example of the parts it runs,
measured once with torch's FlopCounterMode on an example padded to the job's max_length). The server
averages (prompts, tail) as FedAvg does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from functools import lru_cache

import torch
from torch import nn
from torch.utils.data import Subset

from petkit.core.errors import ConfigError
from petkit.core.model import adapt
from petkit.methods.telly import TellyConfig
from petkit.models.structure import encoder_stack, hf_model
from petkit.train.batching import batch_indices, epoch_order, iter_batches

from ..checks import prompt_tuning_only
from ..compute import count_flops, padded_example
from ..local import round_seed, setup
from ..payload import State, load_trainable, trainable_state
from ..registry import FedSystem, register
from ..split_learning import Split
from .fedavg import Averaging

SETTINGS = ("head_layers", "tail_layers", "keep", "prune", "local_loss_steps")


def build_model(base: nn.Module, method_config, job) -> nn.Module:
    return adapted(base, method_config, job.tail_layers)


def adapted(model: nn.Module, prompt_config, tail_layers: int):
    """The client's trainable model: prompts at the input, the tail trained in place (layer freezing
    below it), the task head trained in place with the tail."""
    depth = len(encoder_stack(hf_model(model, "SFPrompt"), "SFPrompt"))
    am = adapt(model, TellyConfig(k=depth - tail_layers), name="tail")
    am.add(dataclasses.replace(prompt_config, train_head=False), name="prompt")
    am.set_active(["tail", "prompt"])
    am.set_trainable("tail")  # adding the prompt froze it; the prompt stays trainable
    return am


def batches(data, collate, batch_size: int, steps: int, seed: int) -> Iterator[dict]:
    """`steps` shuffled batches, epoch after epoch."""
    epoch = 0
    while steps > 0:
        chunk = batch_indices(epoch_order(len(data), seed, epoch), batch_size)[:steps]
        yield from iter_batches(data, chunk, collate)
        steps, epoch = steps - len(chunk), epoch + 1


def client_round(job, partition: int, server_round: int, global_state: State,
                 node_state=None) -> tuple[State, int, float, dict]:
    """One client's round; returns (its trainable state, examples kept, last split-step loss, metrics)."""
    prep, am, parts, _ = setup(job)
    load_trainable(am, global_state)
    split = Split(am, job.head_layers, job.tail_layers)
    local, collate = Subset(prep.train, parts[partition]), prep.train.collate
    seed = round_seed(job, server_round, partition)

    scored = len(local) if job.prune == "el2n" and job.keep < 1 else 0  # keep = 1: nothing to rank
    if scored:
        scores = el2n_scores(split, iter_batches(local, batch_indices(range(len(local)), 64), collate))
    else:  # the ablation: the same number of examples, drawn at random
        scores = torch.rand(len(local), generator=torch.Generator().manual_seed(seed)).tolist()
    kept = Subset(local, keep_hardest(scores, job.keep))

    params = [p for p in am.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=job.lr, weight_decay=0.0)

    def step() -> None:  # after a backward
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # as the trainer does for FedAvg's clients
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

    per_example = client_flops(job)
    metrics = {"split-bytes-up": sent["up"], "split-bytes-down": sent["down"],
               "client-flops": per_example["scoring"] * scored + per_example["training"] * trained}
    return trainable_state(am), len(kept), float(loss), metrics


@lru_cache(maxsize=2)
def client_flops(job) -> dict[str, float]:
    """FLOPs per example of the client's parts (head + tail, body skipped): a scoring forward and a
    training forward + backward."""
    prep, am, _, _ = setup(job)
    batch = padded_example(prep, job.max_length)
    with Split(am, job.head_layers, job.tail_layers).without_body() as model:
        return {"scoring": count_flops(model, batch, backward=False), "training": count_flops(model, batch, backward=True)}


@torch.no_grad()
def el2n_scores(split: Split, batches) -> list[float]:
    """SFPrompt's pruning score per example: ‖softmax(tail(head(x))) − onehot(y)‖₂, body skipped."""
    scores: list[float] = []
    was_training = split.model.training
    split.model.eval()
    try:
        with split.without_body() as local:
            for batch in batches:
                probs = torch.softmax(local(**batch).logits.float(), dim=-1)
                onehot = torch.nn.functional.one_hot(batch["labels"], probs.shape[-1]).float()
                scores += (probs - onehot).norm(dim=-1).tolist()
    finally:
        split.model.train(was_training)
    return scores


def keep_hardest(scores: list[float], keep: float) -> list[int]:
    """Indices of the top `keep` fraction by score (hardest first kept), at least one."""
    if not 0 < keep <= 1:
        raise ConfigError(f"the keep ratio must be in (0, 1], got {keep}")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return sorted(order[: max(1, round(keep * len(scores)))])


def server(job, setup) -> Averaging:
    Split(setup.am, job.head_layers, job.tail_layers)  # a cut the model cannot take fails here, not in every client
    return Averaging(job, setup)


SYSTEM = register(FedSystem(
    name="sfprompt", title="SFPrompt", spec="Cao, Zhu & Gong 2024, arXiv 2407.17533",
    summary="split federated prompt tuning: clients train prompts and the tail across a cut, the server runs the body",
    settings=SETTINGS, check=prompt_tuning_only, build_model=build_model, client_train=client_round, server=server,
))
