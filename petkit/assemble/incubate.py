"""Module incubation (the MT phase of Deep Model Assembling), and what a training step costs.

For module k of a target split into K modules, with a trained meta model M (K modules of one block each):

    hybrid_k = M_0 ∘ … ∘ M_{k-1} ∘ T_k ∘ M_{k+1} ∘ … ∘ M_{K-1}       (T_k: D/K blocks, random init)
    T_k* = argmin_{T_k} E[ loss(hybrid_k(x), y) ]                      (the full task loss)

Only T_k is optimised. The modules before k are frozen (no gradient, no backward through them); the
modules after k stay in the graph — the gradient reaches T_k through them — but are not updated. The
paper and the released code agree on this; the code freezes the earlier modules with requires_grad and
simply leaves the later ones out of the optimizer (they still receive gradients). Here every module but
k has requires_grad off, which gives the same update for less work. The released code also adds
drop-path (0.1) in MT and FT; transformers' BERT has none, so its hidden and attention dropout (0.1) stay. Each k depends only on the meta model
and on T_k's initial weights, so the K incubations can run as separate jobs.

Cost of one step (`step_cost`), in steps of the whole target: a block costs one unit forward and two
backward (activation and weight gradients), so a step of a model whose modules have `depths`, trained
from module `first` on (no backward before it), costs (Σ depths + 2·Σ depths[first:]) / (3·D).
With a meta model of K blocks its step costs K/D, and incubating module k costs
(K−1 + D/K + 2·(D/K + K−1−k)) / (3·D). The frozen blocks after k need only activation gradients
(one unit, not two): counting two overstates the assembling run's cost a little, in the baseline's favour.
Embeddings and the head are not counted: their FLOPs are small next to the blocks', but
the optimizer's update of a large vocabulary's embedding is memory-bound and not small in wall-clock
time, so a small meta model costs more wall-clock than its K/D share (report both).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from petkit.core.errors import ConfigError

from .modules import Split, hybrid, module_state


def freeze_all_but(model: nn.Module, split: Split, k: int) -> list[str]:
    """Make module k the only trainable part of model; returns its parameter names."""
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(split.owner(name) == k)
        if p.requires_grad:
            trainable.append(name)
    if not trainable:
        raise ConfigError(f"module {k} of this model has no parameters to incubate")
    return trainable


def incubation_model(meta: nn.Module, target: nn.Module, k: int, num_modules: int) -> tuple[nn.Module, Split]:
    """The hybrid for module k, with every module but k frozen (meta and target are not changed)."""
    model, split = hybrid(meta, target, k, num_modules)
    freeze_all_but(model, split, k)
    return model, split


def incubate(meta: nn.Module, target: nn.Module, k: int, num_modules: int, train_data, cfg, **train_options):
    """Train module k of target inside the meta model (see the module docstring) with petkit's trainer
    (`cfg`: a petkit.train.TrainConfig; `train_options` go to petkit.train.train). Returns
    (module k's tensors under module-local names, the hybrid, the trainer's result)."""
    from petkit.train import train

    model, split = incubation_model(meta, target, k, num_modules)
    result = train(model, train_data, cfg, **train_options)
    return module_state(model, split, k), model, result


def step_cost(depths: Sequence[int], first_trained: int, target_depth: int) -> float:
    """One training step of a model with these module depths, trained from module `first_trained` on, in
    steps of the whole target (see the module docstring)."""
    forward = sum(depths)
    backward = sum(depths[first_trained:])
    return (forward + 2 * backward) / (3 * target_depth)


def budget(num_modules: int, depth: int, meta_steps: int, incubation_steps: int, finetune_steps: int,
           meta_depth: int | None = None) -> dict:
    """The whole assembling run in target steps: meta (PT), every incubation (MT), fine-tuning (FT);
    the meta model has `meta_depth` blocks (default: one per module)."""
    per, meta_per = depth // num_modules, (meta_depth or num_modules) // num_modules
    meta = meta_steps * step_cost([meta_per] * num_modules, 0, depth)
    incubation = [incubation_steps * step_cost([per if j == k else meta_per for j in range(num_modules)], k, depth)
                  for k in range(num_modules)]
    total = meta + sum(incubation) + finetune_steps
    return {"meta": meta, "incubation": incubation, "finetune": float(finetune_steps), "total": total}
