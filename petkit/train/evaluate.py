"""``evaluate``: score a model on held-out data."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from .batching import batch_indices, to_device, unpack
from .distributed import world
from .metrics import accuracy, class_accuracy, macro_f1, perplexity
from .regression_metrics import regression_metrics

TASKS = ("classification", "causal_lm", "seq2seq", "regression")
PER_EXAMPLE = ("classification", "regression")  # one loss term (and one progress item) per example


def evaluate(model: nn.Module, data, task: str = "classification", *, batch_size: int = 32,
             collate_fn=None, per_class: bool = False) -> dict:
    """Metrics of ``model`` on ``data``, in eval mode and without gradients (the mode is restored).

    ``data`` is a map-style Dataset (batched here in order, with ``collate_fn`` or its ``collate``
    method) or any iterable of ready batches, e.g. a DataLoader. Every batch must carry ``labels``.

    Classification: ``loss``, ``accuracy``, ``macro_f1`` (and with per_class=True ``class_accuracy``,
    a list: each class's accuracy, NaN for a class the data lacks). Language modelling (``causal_lm``,
    ``seq2seq``): ``loss`` (mean per scored token), ``perplexity``, ``tokens``. Regression (``logits`` are
    predictions in the targets' units, ``labels`` the targets): ``loss`` (the model's, on standardised
    targets) and ``mse``, ``mae``, ``r2``, ``pearson``, ``spearman`` in original units (averaged over outputs).

    In a multi-process run (torchrun) every rank must call it: each scores every world-size-th batch
    and all ranks return the metrics of the whole data.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    ranks = world()
    if isinstance(data, Dataset):
        dataset, collate = unpack(data, collate_fn)
        mine = batch_indices(range(len(dataset)), batch_size)[ranks.rank :: ranks.size]
        batches = (collate([dataset[i] for i in idx]) for idx in mine)
        count, spare = len(mine), lambda: collate([dataset[0]])
    elif ranks.size == 1:
        batches, count, spare = data, 0, None  # read lazily, as given
    else:
        every = list(data)
        batches = every[ranks.rank :: ranks.size]
        count, spare = len(batches), lambda: every[0]
    # Sharded models (FSDP) gather weights inside every forward, so every rank runs as many forwards
    # as the busiest one: the extra ones score nothing.
    padding = max(ranks.gather(count)) - count if ranks.size > 1 else 0
    device = next(model.parameters()).device

    was_training = model.training
    model.eval()
    loss_sum, weight, predictions, labels = 0.0, 0, [], []
    try:
        with torch.no_grad():
            for batch in batches:
                batch = to_device(batch, device)
                if "labels" not in batch:
                    raise ValueError(f"evaluation batches need 'labels'; got keys {sorted(batch)}")
                out = model(**batch)
                n = loss_weight(batch["labels"], task)
                loss_sum += out.loss.item() * n  # HF losses are means: weight them back to sums
                weight += n
                if task == "classification":
                    predictions += out.logits.argmax(-1).tolist()
                    labels += batch["labels"].tolist()
                elif task == "regression":
                    predictions += out.logits.reshape(len(batch["labels"]), -1).tolist()
                    labels += batch["labels"].reshape(len(batch["labels"]), -1).tolist()
            for _ in range(padding):
                model(**to_device(spare(), device))
    finally:
        model.train(was_training)

    if ranks.size > 1:
        parts = ranks.gather((loss_sum, weight, predictions, labels))
        loss_sum, weight = sum(p[0] for p in parts), sum(p[1] for p in parts)
        predictions, labels = [x for p in parts for x in p[2]], [x for p in parts for x in p[3]]
    mean_loss = loss_sum / weight if weight else float("nan")
    if task == "classification":
        metrics = {"loss": mean_loss, "accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels)}
        return {**metrics, "class_accuracy": class_accuracy(predictions, labels)} if per_class else metrics
    if task == "regression":
        return {"loss": mean_loss, **regression_metrics(predictions, labels)}
    return {"loss": mean_loss, "perplexity": perplexity(mean_loss), "tokens": weight}


def loss_weight(labels: torch.Tensor, task: str) -> int:
    """How many terms the model's mean loss averaged over."""
    if task in PER_EXAMPLE:
        return labels.shape[0]
    if task == "causal_lm":
        return int((labels[:, 1:] != -100).sum())  # the model predicts token t+1 from tokens <= t
    return int((labels != -100).sum())
