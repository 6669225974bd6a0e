"""LoRAPrune's structured pruning during LoRA training (Zhang et al., ACL Findings 2024, arXiv 2305.18403).

Units: the attention heads and the FFN channels of every block. A unit's score sums, over the
modules it spans, the module's group scores normalised to unit L2 norm:
- a head: its rows of q (and of k and v when every head has its own, no grouped-query sharing) and
  its columns of the output projection; with grouped-query attention the query heads are the units
  (k and v are shared) and every kv group keeps the same number of them, as the model's shapes need;
- an FFN channel: its row of the gate and up projections (or the one input projection) and its column
  of the output projection.
Group scores come from `criterion`: "lora" (|Ĝ ⊙ (W + s·BA)| from the LoRA's gradients, the paper's),
"grad" (|∇W ⊙ W|, which needs the frozen weights' gradients), "magnitude" (|W + s·BA|) or "random".
Scores are smoothed by an EMA over optimiser steps (S ← 0.9·S + 0.1·s).

Schedule (the released code's): the pruned share follows a cubic ramp, 0 for the first `warmup` share of
the steps and `ratio` for the last `cooldown` share, r + (0 − r)·(1 − (t − w)/(T − w − c))³ between; every
`every` steps on the ramp (and once it ends) each layer prunes its lowest-scoring live units up to the
current share ("local" pruning; a pruned unit scores 0 and stays pruned). The first `exempt_first` share
of the layers and, with `exempt_last`, the last layer are never pruned.

A pruned unit is masked where it is read: the input of the attention output projection (a head's
slice) and of the FFN output projection (a channel), through forward pre-hooks on those modules, which
is what removing the unit's rows and columns computes (a head whose q alone were zeroed would still
attend, uniformly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.blocks import layer_stacks
from petkit.core.errors import ConfigError, TargetError
from petkit.core.layer import AdaptedLayer, weight_oi
from petkit.core.model import AdaptedModel
from petkit.core.roles import roles_of

from .importance import group_scores, lora_importance, true_importance

CRITERIA = ("lora", "grad", "magnitude", "random")


@dataclass
class Block:
    """One transformer block's prunable modules (paths) and unit counts."""
    index: int
    q: str
    k: str
    v: str
    out: str
    ffn_in: list[str]
    ffn_out: str
    heads: int
    kv_heads: int
    head_dim: int
    channels: int


def find_blocks(model: nn.Module) -> list[Block]:
    """The attention and FFN modules of every block, by role; heads from the model's config."""
    hf = model.base if isinstance(model, AdaptedModel) else model
    config = hf.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    roles = roles_of(hf)
    try:
        found = {r: roles.paths(r) for r in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.in", "mlp.out")}
    except TargetError as exc:
        raise TargetError(f"structured pruning needs separate q, k, v, output and FFN projections: {exc}") from None
    blocks = []
    for stack, layers in layer_stacks(hf):
        for i in range(len(layers)):
            prefix = f"{stack}.{i}."
            inside = {r: sorted(p for p in paths if p.startswith(prefix)) for r, paths in found.items()}
            if not all(inside[r] for r in inside):
                continue
            ffn_out = hf.get_submodule(inside["mlp.out"][0])
            channels = weight_oi(ffn_out.base_layer if isinstance(ffn_out, AdaptedLayer) else ffn_out).shape[1]
            blocks.append(Block(len(blocks), inside["attn.q"][0], inside["attn.k"][0], inside["attn.v"][0],
                                inside["attn.out"][0], inside["mlp.in"], inside["mlp.out"][0], heads, kv_heads,
                                head_dim, channels))
    if not blocks:
        raise TargetError(f"found no transformer blocks with attention and FFN projections in {type(hf).__name__}")
    return blocks


def check_settings(ratio, criterion: str) -> None:
    if isinstance(ratio, bool) or not (isinstance(ratio, (int, float)) and 0 <= ratio < 1):
        raise ConfigError(f"ratio must be in [0, 1) (the share of heads and channels removed), got {ratio!r}")
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


def cubic_ratio(step: int, total: int, ratio: float, warmup: float = 0.1, cooldown: float = 0.1) -> float:
    w, c = round(warmup * total), round(cooldown * total)
    if step <= w:
        return 0.0
    if step >= total - c:
        return ratio
    return ratio - ratio * (1 - (step - w) / max(1, total - w - c)) ** 3


class StructuredPruner:
    def __init__(self, model: nn.Module, ratio: float, total_steps: int, *, adapter: str = "default",
                 criterion: str = "lora", every: int = 10, ema: float = 0.9, warmup: float = 0.1,
                 cooldown: float = 0.1, exempt_first: float = 0.1, exempt_last: bool = True, seed: int = 0):
        check_settings(ratio, criterion)
        self.model, self.adapter, self.criterion = model, adapter, criterion
        self.ratio, self.total, self.every, self.ema = float(ratio), int(total_steps), int(every), float(ema)
        self.warmup, self.cooldown = warmup, cooldown
        self.blocks = find_blocks(model)
        n = len(self.blocks)
        exempt = set(range(int(exempt_first * n))) | ({n - 1} if exempt_last else set())
        self.prunable = [b.index for b in self.blocks if b.index not in exempt]
        self.head_mask = [torch.ones(b.heads, dtype=torch.bool) for b in self.blocks]
        self.channel_mask = [torch.ones(b.channels, dtype=torch.bool) for b in self.blocks]
        self.head_score = [torch.zeros(b.heads) for b in self.blocks]
        self.channel_score = [torch.zeros(b.channels) for b in self.blocks]
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.handles = []
        for b in self.blocks:
            self.handles.append(self._module(b.out).register_forward_pre_hook(self._masking(b.index, "heads")))
            self.handles.append(self._module(b.ffn_out).register_forward_pre_hook(self._masking(b.index, "channels")))

    # -- plumbing ---------------------------------------------------------------------------------
    def _module(self, path: str) -> nn.Module:
        return (self.model.base if isinstance(self.model, AdaptedModel) else self.model).get_submodule(path)

    def _masking(self, index: int, what: str):
        def hook(module, args):
            mask = self.head_mask[index] if what == "heads" else self.channel_mask[index]
            if bool(mask.all()):
                return None
            x = args[0]
            if what == "heads":
                mask = mask.repeat_interleave(self.blocks[index].head_dim)
            return (x * mask.to(x.dtype).to(x.device),) + tuple(args[1:])
        return hook

    def _pieces(self, path: str):
        module = self._module(path)
        if isinstance(module, AdaptedLayer):
            return module.base_layer, module.deltas[self.adapter] if self.adapter in module.deltas else None
        return module, None

    def _importance(self, path: str) -> torch.Tensor:
        base, delta = self._pieces(path)
        if self.criterion == "lora":
            if delta is None:
                raise ConfigError(f"the lora criterion needs a LoRA adapter {self.adapter!r} on {path}")
            return lora_importance(delta, base)
        if self.criterion == "grad":
            return true_importance(base)
        weight = weight_oi(base).detach().float()
        if delta is not None:
            weight = weight + delta.delta_weight(base).detach().float()
        if self.criterion == "magnitude":
            return weight.abs()
        return torch.rand(weight.shape, generator=self.generator)

    # -- scores -----------------------------------------------------------------------------------
    def unit_scores(self, b: Block) -> tuple[torch.Tensor, torch.Tensor]:
        """(heads, channels) scores of one block from the current gradients or weights."""
        def norm(x: torch.Tensor) -> torch.Tensor:
            return x / (x.norm() + 1e-8)
        heads = norm(group_scores(self._importance(b.q), "rows", b.head_dim))
        heads = heads + norm(group_scores(self._importance(b.out), "columns", b.head_dim))
        if b.kv_heads == b.heads:  # each head has its own k and v
            heads = heads + norm(group_scores(self._importance(b.k), "rows", b.head_dim))
            heads = heads + norm(group_scores(self._importance(b.v), "rows", b.head_dim))
        channels = norm(group_scores(self._importance(b.ffn_out), "columns"))
        for path in b.ffn_in:
            channels = channels + norm(group_scores(self._importance(path), "rows"))
        return heads, channels

    @torch.no_grad()
    def step(self) -> None:
        """After backward, before the optimiser zeroes the gradients: update the scores and prune on schedule."""
        self.steps += 1
        for i in self.prunable:
            heads, channels = self.unit_scores(self.blocks[i])
            if not (torch.isfinite(heads).all() and torch.isfinite(channels).all()):
                continue  # the released code skips a NaN update
            self.head_score[i] = self.ema * self.head_score[i] + (1 - self.ema) * heads
            self.channel_score[i] = self.ema * self.channel_score[i] + (1 - self.ema) * channels
        on_ramp = 0 < cubic_ratio(self.steps, self.total, self.ratio, self.warmup, self.cooldown)
        if on_ramp and (self.steps % self.every == 0 or self.steps >= self.total):
            self.prune_to(cubic_ratio(self.steps, self.total, self.ratio, self.warmup, self.cooldown))

    def attach(self, optimizer: torch.optim.Optimizer):
        """Run `step` at the start of every optimizer.step() (the gradients are there then)."""
        return optimizer.register_step_pre_hook(lambda *_: self.step())

    def prune_to(self, share: float) -> None:
        for i in self.prunable:
            b = self.blocks[i]
            self.channel_mask[i] = _keep_top(self.channel_score[i], self.channel_mask[i], share)
            # grouped-query attention: every kv head keeps as many query heads; otherwise one group of all
            groups = b.kv_heads if b.kv_heads < b.heads else 1
            scores = self.head_score[i].view(groups, -1)
            masks = self.head_mask[i].view(groups, -1)
            self.head_mask[i] = torch.stack([_keep_top(s, m, share) for s, m in zip(scores, masks)]).flatten()

    # -- results --------------------------------------------------------------------------------
    def pruned_share(self) -> dict[str, float]:
        heads = sum(int((~self.head_mask[i]).sum()) for i in self.prunable)
        channels = sum(int((~self.channel_mask[i]).sum()) for i in self.prunable)
        return {"heads": heads / sum(self.blocks[i].heads for i in self.prunable),
                "channels": channels / sum(self.blocks[i].channels for i in self.prunable)}

    def release(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _keep_top(score: torch.Tensor, mask: torch.Tensor, share: float) -> torch.Tensor:
    """The mask after pruning the lowest-scoring live units until `share` of them are gone (never fewer
    than before; a pruned unit stays pruned)."""
    need = math.floor(share * len(mask) + 1e-9)
    if need <= int((~mask).sum()):
        return mask
    live = torch.where(mask, score, torch.full_like(score, -math.inf))
    order = live.argsort()  # pruned units (−inf) first, then the lowest live ones
    keep = torch.ones_like(mask)
    keep[order[:need]] = False
    return keep
