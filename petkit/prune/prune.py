"""`prune(model, sparsity)`: one-shot pruning of a pre-trained model's attention and FFN weights
(essential sparsity, Jaiswal et al. 2023), in place, with the zeros kept through later training.

    from petkit.prune import prune
    result = prune(model, 0.5)                            # global magnitude, 50% of the targeted weights
    result = prune(model, kind="nm", n=2, m=4)            # 2:4
    result.sparsity, result.per_layer                     # what was removed
    ... fine-tune (full or LoRA): the pruned weights stay exactly zero
    result.release()                                      # stop holding them at zero

Targets default to every attention projection (q, k, v or a fused qkv, and the output) and the FFN's
input and output layers of every block; embeddings, norms, biases and the task or LM head are left
alone, as in the paper's code. Every mask is computed and checked before any weight changes, so a
refused prune leaves the model as it was.

The zeros stay zero under training because a gradient hook masks the pruned entries' gradients: with
no gradient, AdamW's moments stay zero and so does its update, and decoupled weight decay of a zero
is zero. (PyTorch's own torch.nn.utils.prune re-parametrises the weight as weight_orig · mask, which
changes the state dict's names; petkit keeps the model's own tensors.) A LoRA trained on top of the
pruned base leaves the base sparse; merging it would fill the zeros in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from petkit.core.errors import ConfigError, TargetError
from petkit.core.layer import weight_oi
from petkit.core.module_types import Conv1D
from petkit.core.targeting import output_head_names, resolve_targets, task_head_names
from petkit.core.unwrapped import named_base_modules

from . import masks as M

DEFAULT_TARGETS = ("attn.qkv", "attn.out", "mlp.in", "mlp.out")


@dataclass
class PruneResult:
    kind: str
    requested: float                              # the sparsity asked for (N/M for N:M)
    masks: dict[str, torch.Tensor]                # module path -> keep-mask in the weight's stored layout
    handles: list = field(default_factory=list, repr=False)

    @property
    def per_layer(self) -> dict[str, float]:
        return {p: 1 - mask.float().mean().item() for p, mask in self.masks.items()}

    @property
    def sparsity(self) -> float:
        """The share of targeted weights removed."""
        total = sum(m.numel() for m in self.masks.values())
        return sum(int((~m).sum()) for m in self.masks.values()) / total

    @property
    def removed(self) -> int:
        return sum(int((~m).sum()) for m in self.masks.values())

    def release(self) -> None:
        """Stop masking the pruned weights' gradients (the zeros stay until something trains them)."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def prunable_modules(model: nn.Module, targets=None, exclude=()) -> dict[str, nn.Module]:
    """The modules whose weights pruning may zero: `targets` (names, roles, regexes) or the defaults."""
    heads = set(task_head_names(model)) | output_head_names(model)
    paths = resolve_targets(model, targets or DEFAULT_TARGETS, exclude, protected=tuple(heads),
                            optional=targets is None)
    modules = dict(named_base_modules(model))
    chosen = {}
    for p in paths:
        module = modules[p]
        if not isinstance(module, nn.Linear) and not (Conv1D and isinstance(module, Conv1D)):
            raise TargetError(f"{p} is a {type(module).__name__}; pruning zeroes the weights of linear layers")
        chosen[p] = module
    return chosen


def prune(model: nn.Module, sparsity: float | None = None, kind: str = "global", *, n: int | None = None,
          m: int | None = None, targets=None, exclude=(), seed: int = 0) -> PruneResult:
    """Zero the chosen weights of the targeted layers, in place, and keep them zero while training."""
    if kind not in M.KINDS:
        raise ConfigError(f"kind must be one of {M.KINDS}, got {kind!r}")
    if kind == "nm":
        if sparsity is not None:
            raise ConfigError("N:M pruning removes N of every M weights: give n and m, not sparsity")
        if n is None or m is None:
            raise ConfigError("N:M pruning needs n and m (e.g. n=2, m=4 removes 2 of every 4)")
    else:
        if n is not None or m is not None:
            raise ConfigError(f"n and m are for kind='nm', not {kind!r}")
        sparsity = M.check_sparsity(0.5 if sparsity is None else sparsity)
    if any(getattr(mod, "_petkit_pruned", False) for mod in model.modules()):
        raise ConfigError("this model is pruned already; prune a fresh copy of the pre-trained model")
    modules = prunable_modules(model, targets, exclude)
    weights = {p: weight_oi(mod) for p, mod in modules.items()}
    generator = torch.Generator().manual_seed(seed)
    if kind == "global":
        keep = M.global_magnitude(weights, sparsity)
    elif kind == "layer":
        keep = M.layer_magnitude(weights, sparsity)
    elif kind == "random":
        keep = M.random_global(weights, sparsity, generator)
    elif kind == "erk":
        keep = M.random_erk(weights, sparsity, generator)
    else:
        keep = M.n_m(weights, n, m)
    # every mask exists: now change the model
    result = PruneResult(kind, n / m if kind == "nm" else sparsity, {})
    for p, module in modules.items():
        mask_oi = keep[p].to(module.weight.device)
        with torch.no_grad():
            weight_oi(module).mul_(mask_oi.to(module.weight.dtype))
        stored = mask_oi.t() if Conv1D and isinstance(module, Conv1D) else mask_oi
        result.masks[p] = stored
        result.handles.append(module.weight.register_hook(_masker(stored)))
        module._petkit_pruned = True
    return result


def _masker(mask: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * mask.to(grad.dtype)
    return hook
