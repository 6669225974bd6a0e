"""``train``: a plain PyTorch training loop, meant to be read top to bottom.

    cfg = TrainConfig(lr=1e-3, epochs=2, batch_size=16, checkpoint_every=50, output_dir="runs/a")
    result = train(model, train_dataset, cfg, eval_data=dev_dataset, task="classification")
    result = train(model, train_dataset, cfg, eval_data=dev_dataset, resume=True)  # after a crash

The model is any ``nn.Module`` called as ``model(**batch)`` that returns an object with ``.loss``
and ``.logits`` (every Hugging Face model does). Exactly the parameters with ``requires_grad=True``
are trained: freeze the rest (or let an adapter library do it) before calling ``train``.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from petkit.core.errors import ConfigError

from .batching import batch_indices, epoch_order, to_device, unpack
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    restore,
    save_checkpoint,
)
from .config import TrainConfig
from .distributed import World, prepare_model, world
from .evaluate import PER_EXAMPLE, TASKS, evaluate, loss_weight
from .lm_loss import can_keep_labelled_logits, training_loss
from .metrics import MetricsLog
from .progress import ProgressBar
from .schedule import learning_rate

# Settings that fix which examples land in which step: a resume with other values would not continue
# the same run, so it is refused rather than silently diverging.
ORDER_SETTINGS = ("seed", "batch_size", "grad_accum")


@dataclass
class StepInfo:
    """Passed to ``on_step`` after every optimizer step (and after any checkpoint for that step)."""
    step: int
    epoch: int
    loss: float
    lr: float


@dataclass
class TrainResult:
    steps: int                      # optimizer steps taken in total (including before a resume)
    epochs: int                     # epochs completed
    train_loss: float               # mean micro-batch loss of the last (possibly partial) epoch
    eval_metrics: dict = field(default_factory=dict)  # the last evaluation
    history: list[dict] = field(default_factory=list)  # the run's metrics.jsonl records (also before a resume)
    checkpoint: Path | None = None  # the last checkpoint written
    resumed_from: Path | None = None


def train(
    model: nn.Module,
    train_data,
    cfg: TrainConfig,
    *,
    eval_data=None,
    task: str = "classification",
    collate_fn: Callable | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Train the trainable parameters of ``model`` on ``train_data``; see the module docstring.

    ``train_data`` / ``eval_data``: map-style Datasets (petkit.data datasets carry their collate
    function) or DataLoaders, whose dataset and collate function are used — the trainer orders and
    batches the data itself, with ``cfg.batch_size`` and a per-epoch seeded shuffle, so that a resume
    can skip exactly the batches already seen. ``task``: classification, causal_lm, seq2seq or
    regression (which metrics to compute). ``resume``: continue from the newest valid checkpoint in ``cfg.output_dir``
    (same data order, dropout RNG and learning rate as if never stopped), or start fresh if none.
    Without ``resume``, an ``output_dir`` that already holds checkpoints is refused, so two runs
    never mix. ``on_step`` is called after every optimizer step (to log, or to stop by raising).

    Under ``torchrun`` (a process group initialised, e.g. by ``petkit.train.distributed.init_from_env``)
    every rank calls ``train`` with the same arguments: each trains on its shard of every global batch
    (see ``distributed``), rank 0 alone logs, shows progress and writes checkpoints, and the result
    equals a single-process run with the same global batch.
    """
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    if resume and not cfg.output_dir:
        raise ConfigError("resume=True needs cfg.output_dir, the folder that holds the checkpoints")
    dataset, collate = unpack(train_data, collate_fn, cfg.batch_size)
    if len(dataset) == 0:
        raise ConfigError("the training data is empty")

    # --- 1. Run length. A step is one optimizer update over grad_accum micro-batches; the last
    # update of an epoch may use fewer, so accumulation never straddles an epoch boundary.
    batches_per_epoch = math.ceil(len(dataset) / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch

    # --- 2. What trains, and how.
    optimizer, named_params = build_optimizer(model, cfg)
    for module in model.modules():  # an adapter's once-per-step gradient terms (SaRA's nuclear norm)
        if hasattr(module, "hook_optimizer"):
            module.hook_optimizer(optimizer)
    ranks = world()

    # --- 3. Start fresh, or pick up where a checkpoint left off. `state` is everything the loop
    # tracks (all JSON-able); with the weights, optimizer and RNG states it is what a checkpoint holds.
    seed_everything(cfg.seed)
    if ranks.rank:
        torch.manual_seed(cfg.seed + ranks.rank)  # other dropout masks on every rank
    state = {"step": 0, "epoch": 0, "batches_done": 0, "loss_sum": 0.0, "loss_count": 0,
             "train_loss": float("nan"), "eval_step": None, "eval_metrics": {}}
    log = MetricsLog(cfg.output_dir if ranks.main else None)
    resumed_from = None
    if resume:
        checkpoint = latest_checkpoint(cfg.output_dir)
        if checkpoint is None:
            warnings.warn(f"resume=True but {cfg.output_dir} has no checkpoint yet: starting at step 0", stacklevel=2)
        else:
            _check_resumable(checkpoint, cfg, len(dataset))
            restore(checkpoint, named_params, optimizer, ranks.rank)
            state = dict(checkpoint.state["loop"])
            resumed_from = checkpoint.path
    elif cfg.output_dir and list_checkpoints(cfg.output_dir):
        raise CheckpointError(f"{cfg.output_dir} already holds checkpoints of an earlier run: pass resume=True "
                              f"to continue it, or use another (or an emptied) output_dir")
    if resumed_from:
        # Records the run wrote after this checkpoint will be written again: drop them.
        log.keep_only(lambda r: r["step"] < state["step"] or (r["event"] == "epoch" and r["epoch"] <= state["epoch"]))
    else:
        log.start_fresh()
    saved_state = dict(state) if resumed_from else None

    def save() -> Path:
        nonlocal saved_state
        saved_state = dict(state)
        document = {"loop": saved_state, "config": cfg.to_dict(), "task": task,
                    "num_examples": len(dataset), "total_steps": total_steps, "world_size": ranks.size}
        rngs = ranks.gather(torch.get_rng_state())
        path = (save_checkpoint(cfg.output_dir, state["step"], named_params, optimizer, document,
                                cfg.keep_checkpoints, rngs) if ranks.main else None)
        ranks.barrier()  # no rank runs ahead of a checkpoint being written
        return path

    def run_eval() -> dict:
        metrics = evaluate(model, eval_data, task, batch_size=cfg.eval_batch_size or cfg.batch_size,
                           collate_fn=collate_fn)
        state.update(eval_step=state["step"], eval_metrics=metrics)
        return {f"eval_{k}": v for k, v in metrics.items()}

    device = next(model.parameters()).device
    net, after_backward = prepare_model(model, named_params, ranks, cfg.parallel)  # model itself in one process
    labelled_only = task == "causal_lm" and can_keep_labelled_logits(net)  # see lm_loss.py
    started = time.perf_counter()
    last_checkpoint = resumed_from
    lr = learning_rate(max(state["step"] - 1, 0), total_steps, cfg)  # the last step's rate, until we step

    # --- 4. The loop.
    model.train()
    with ProgressBar(total_steps, state["step"], "samples" if task in PER_EXAMPLE else "tokens",
                     progress and ranks.main) as bar:
        while state["step"] < total_steps:
            batches = batch_indices(epoch_order(len(dataset), cfg.seed, state["epoch"]), cfg.batch_size)
            remaining = batches[state["batches_done"]:]  # all of them, unless resuming mid-epoch
            for start in range(0, len(remaining), cfg.grad_accum):
                group = remaining[start : start + cfg.grad_accum]
                loss, items = _accumulate_gradients(net, dataset, collate, group, device, task, ranks,
                                                    labelled_only)
                after_backward()
                lr = learning_rate(state["step"], total_steps, cfg)
                _optimizer_step(optimizer, named_params, lr, cfg.max_grad_norm)
                state["step"] += 1
                state["batches_done"] += len(group)
                state["loss_sum"] += loss * len(group)
                state["loss_count"] += len(group)
                state["train_loss"] = state["loss_sum"] / state["loss_count"]
                bar.update(loss, lr, items)
                if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                    last_checkpoint = save()
                if on_step is not None:
                    on_step(StepInfo(state["step"], state["epoch"], loss, lr))
                if state["step"] >= total_steps:
                    break

            if state["batches_done"] < len(batches):
                break  # max_steps reached mid-epoch
            record = {"event": "epoch", "epoch": state["epoch"] + 1, "step": state["step"],
                      "train_loss": state["train_loss"], "lr": lr,
                      "elapsed_s": round(time.perf_counter() - started, 3),
                      f"{bar.unit}_per_s": round(bar.throughput(), 1)}
            if cfg.eval_every_epoch and eval_data is not None:
                record.update(run_eval())
            log.write(record)
            bar.log(_describe(record))
            state.update(epoch=state["epoch"] + 1, batches_done=0, loss_sum=0.0, loss_count=0)

    # --- 5. Final evaluation (unless the last epoch just did it) and checkpoint.
    if eval_data is not None and state["eval_step"] != state["step"]:
        log.write({"event": "final", "step": state["step"], **run_eval()})
    # Saved even when a step checkpoint exists for this step: that one predates the epoch-end bookkeeping.
    if cfg.output_dir and state != saved_state:
        last_checkpoint = save()
    model.eval()
    return TrainResult(state["step"], state["epoch"], state["train_loss"], state["eval_metrics"], log.records,
                       last_checkpoint, resumed_from)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.AdamW, list[tuple[str, nn.Parameter]]]:
    """AdamW over the trainable parameters; weight decay on matrices only (not biases or norm scales).

    Returns the optimizer and the (name, parameter) pairs in the optimizer's slot order, which is
    how checkpoints map optimizer state to names.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has no parameters with requires_grad=True: nothing to train")
    decay = [(n, p) for n, p in trainable if p.ndim >= 2]
    no_decay = [(n, p) for n, p in trainable if p.ndim < 2]
    groups = [{"params": [p for _, p in g], "weight_decay": wd}
              for g, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)) if g]
    return torch.optim.AdamW(groups, lr=cfg.lr), decay + no_decay


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _accumulate_gradients(model, dataset, collate, group, device, task, ranks: World,
                          labelled_only: bool = False) -> tuple[float, int]:
    """Forward and backward over the micro-batches of one step; returns (mean loss, samples or tokens).

    With several ranks each takes its shard of every micro-batch and weights its mean loss by its
    share of the micro-batch's loss terms (times the world size, which DDP's gradient average divides
    out), so the gradient is that of the whole micro-batch's mean loss. A rank whose shard is empty
    still runs one example at weight 0: DDP needs every rank in every backward.
    """
    shards = [ranks.shard(indices) for indices in group]
    batches = [to_device(collate([dataset[i] for i in (shard or indices[:1])]), device)
               for shard, indices in zip(shards, group)]
    terms = [loss_weight(b["labels"], task) if shard and "labels" in b else 0 for b, shard in zip(batches, shards)]
    items = [_items(b, task) if shard else 0 for b, shard in zip(batches, shards)]
    totals = ranks.sum(terms + [sum(items)])
    local_sum = 0.0
    for j, (batch, n) in enumerate(zip(batches, terms)):
        last = j == len(batches) - 1
        with model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext():
            loss = training_loss(model, batch, task, labelled_only)
            share = (n / totals[j] if totals[j] else 0.0) if ranks.size > 1 else 1.0
            # Dividing by the number of micro-batches makes the summed gradient that of their mean loss.
            (loss * (share * ranks.size / len(group))).backward()
        local_sum += loss.item() * share
    loss = ranks.sum([local_sum])[0]
    return loss / len(group), int(totals[-1])


def _items(batch: dict, task: str) -> int:
    """What the progress bar counts: samples, or tokens read for language models."""
    if task in PER_EXAMPLE:
        return batch["labels"].shape[0]
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def _optimizer_step(optimizer, named_params, lr: float, max_grad_norm: float | None) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for _, p in named_params], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _check_resumable(checkpoint: Checkpoint, cfg: TrainConfig, num_examples: int) -> None:
    saved = checkpoint.state["config"]
    for key in ORDER_SETTINGS:
        if saved.get(key) != getattr(cfg, key):
            raise CheckpointError(f"cannot resume from {checkpoint.path}: {key} was {saved.get(key)!r} in that run "
                                  f"and is {getattr(cfg, key)!r} now, so the data order would not match")
    if checkpoint.state["num_examples"] != num_examples:
        raise CheckpointError(f"cannot resume from {checkpoint.path}: it was trained on {checkpoint.state['num_examples']} "
                              f"examples and the training data now has {num_examples}")
    changed = {k: (saved.get(k), v) for k, v in cfg.to_dict().items() if k not in ORDER_SETTINGS and saved.get(k) != v}
    if changed:
        warnings.warn(f"resuming with changed settings (was, now): {changed}", stacklevel=3)


def _describe(record: dict) -> str:
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "event"]
    return "  ".join(parts)
