"""Is fine-tuning a "wrapper"? Tools of Jain, Kirk, Lubana et al. (ICLR 2024) for a real model.

A *base capability* is something a linear readout of an intermediate layer recovers (e.g. a sentence's
question type). The analysis asks what adaptation to another task did to it:

- ``layer_features``: mean-pooled hidden states of every layer (0 = embeddings, i = block i's output);
- ``probe_layers``: a logistic-regression probe per layer, trained on one split, scored on another;
  probing the base and the adapted model on the same data shows whether the information is still there;
- ``prune_delta``: the adapted weights with their largest changes (top-|ΔW| entries, one global
  threshold) put back to the base values — the paper's "pruning" check that a wrapper is small and
  localised: probing the result shows whether removing a few changed weights revives the capability;
- ``steps_to_recover``: the reverse fine-tuning (reFT) metric — how many steps training on the base
  task takes to get back to a share of the original accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from petkit.core.errors import ConfigError
from petkit.analysis.embed import check_layers
from petkit.models.pooling import evaluating, masked_mean


def layer_features(model: nn.Module, dataset, layers: Iterable[int] | None = None,
                   batch_size: int = 32) -> dict[int, torch.Tensor]:
    """Mean-pooled (over real tokens) hidden states of ``layers`` (default all) for every example of
    ``dataset`` (a petkit dataset with ``collate``), as {layer: (examples × hidden)} on the CPU.

    Layer 0 is the embedding output, layer i the output of block i; a layer outside 0..L is a ConfigError
    naming the valid range."""
    wanted = None if layers is None else sorted(set(layers))
    pooled: dict[int, list[torch.Tensor]] = {}
    with evaluating(model), torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = dataset.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch.pop("labels", None)
            hidden = model(**batch, output_hidden_states=True).hidden_states
            if wanted is None:
                wanted = list(range(len(hidden)))
            check_layers(wanted, len(hidden) - 1)
            for i in wanted:
                pooled.setdefault(i, []).append(masked_mean(hidden[i], batch["attention_mask"]))
    if not pooled:
        raise ConfigError("layer_features needs at least one example")
    return {i: torch.cat(chunks).float() for i, chunks in pooled.items()}


def probe_layers(train: Mapping[int, torch.Tensor], train_labels: Sequence[int],
                 test: Mapping[int, torch.Tensor], test_labels: Sequence[int],
                 c: float = 1.0, max_iter: int = 2000, seed: int = 0) -> dict[int, float]:
    """Test accuracy of a standardised logistic-regression probe per layer, fitted on ``train``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if set(train) != set(test):
        raise ConfigError(f"train and test features must hold the same layers, got {sorted(train)} and {sorted(test)}")
    y_train, y_test = np.asarray(train_labels), np.asarray(test_labels)
    if len(np.unique(y_train)) < 2:
        raise ConfigError("a probe needs at least two classes in its training labels")
    accuracy = {}
    for i in sorted(train):
        if len(train[i]) != len(y_train) or len(test[i]) != len(y_test):
            raise ConfigError(f"layer {i}: {len(train[i])}/{len(test[i])} feature rows for "
                              f"{len(y_train)}/{len(y_test)} labels")
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
        probe.fit(train[i].numpy(), y_train)
        accuracy[i] = float((probe.predict(test[i].numpy()) == y_test).mean())
    return accuracy


def prune_delta(base: Mapping[str, torch.Tensor], adapted: Mapping[str, torch.Tensor],
                fraction: float) -> dict[str, torch.Tensor]:
    """``adapted`` with the ``fraction`` largest-magnitude entries of ΔW = adapted − base (ranked over
    all shared floating-point tensors together) set back to their base values. 0 keeps ``adapted``,
    1 gives ``base`` back; tensors only one side holds (a new task head) are kept as adapted."""
    if not 0 <= fraction <= 1:
        raise ConfigError(f"fraction must be in [0, 1], got {fraction!r}")
    shared = [k for k, v in adapted.items()
              if k in base and v.is_floating_point() and base[k].shape == v.shape]
    if not shared:
        raise ConfigError("the base and adapted weights share no floating-point tensor of the same shape")
    deltas = {k: (adapted[k] - base[k]).float() for k in shared}
    magnitudes = torch.cat([d.abs().flatten() for d in deltas.values()])
    count = round(fraction * magnitudes.numel())
    out = dict(adapted)
    if count == 0:
        return out
    # The count-th largest |ΔW|: entries at or above it go back (ties may take a few more).
    threshold = torch.topk(magnitudes, count, sorted=False).values.min()
    for k, d in deltas.items():
        out[k] = torch.where(d.abs() >= threshold, base[k], adapted[k])
    return out


def steps_to_recover(curve: Sequence[tuple[int, float]], original: float, share: float = 0.9) -> int | None:
    """The first step of a reverse fine-tuning ``curve`` [(step, accuracy), ...] at which accuracy is at
    least ``share`` × ``original``; None if it never gets there."""
    if not 0 < share <= 1:
        raise ConfigError(f"share must be in (0, 1], got {share!r}")
    target = share * original
    return next((step for step, accuracy in sorted(curve) if accuracy >= target), None)
