"""ContraBERT-style contrastive augmentation as an optional extra training loss.

ContraBERT (Liu et al., ICSE 2023) adds to its pre-training loss an InfoNCE term that pulls an input's
representation towards the one of a semantics-preserving mutation of it, MoCo-style:

    q  = pool(M(x)),   k⁺ = pool(M'(aug(x)))            (both L2-normalised; M' a momentum copy of M)
    L_CL = −log exp(q·k⁺/τ) / (exp(q·k⁺/τ) + Σ_{k⁻ ∈ queue} exp(q·k⁻/τ));   enqueue k⁺, drop the oldest
    θ' ← m·θ' + (1 − m)·θ  after every optimizer step

Here the mutations are the text analogue of its natural-language operators (drop / swap / mask a share
of the tokens, never the special tokens) and the term is added to the fine-tuning loss with a weight:
L = L_task + weight · L_CL. ``negatives="queue"`` is the paper's MoCo queue and momentum encoder (the
default); ``negatives="batch"`` is the simpler in-batch variant (k from the same encoder, with
gradients; the other keys of the batch are the negatives), not the paper's.

    objective = ContrastiveObjective(adapted_model, TokenAugmenter.for_tokenizer(tok, rate=0.15))
    train(objective, train_data, cfg)   # petkit's trainer calls hook_optimizer for the momentum update
    adapted_model(**batch)              # the trained model, used as before
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.errors import ConfigError

AUGMENTATIONS = ("drop", "swap", "mask")
NEGATIVES = ("queue", "batch")


class TokenAugmenter:
    """Perturbs a padded batch of token ids: each row gets one of ``kinds`` (drawn per row) applied to
    ``rate`` of its ordinary tokens (specials and padding untouched; labels unchanged):

    - drop: those tokens removed (the row shifts left and is padded; at least one token stays);
    - swap: pairs of them exchanged (rate × n tokens move);
    - mask: those tokens replaced by ``mask_id``.
    """

    def __init__(self, special_ids: Sequence[int], pad_id: int, mask_id: int | None = None,
                 kinds: Sequence[str] = AUGMENTATIONS, rate: float = 0.15, seed: int = 0):
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in AUGMENTATIONS]
        if not kinds or unknown:
            raise ConfigError(f"augmentation kinds must be a non-empty subset of {AUGMENTATIONS}, got {kinds}")
        if "mask" in kinds and mask_id is None:
            raise ConfigError("the 'mask' augmentation needs a mask_id (this tokenizer has no mask token?)")
        if not 0 <= rate < 1:
            raise ConfigError(f"rate must be in [0, 1), got {rate!r}")
        self.special_ids, self.pad_id, self.mask_id = set(special_ids), pad_id, mask_id
        self.kinds, self.rate = kinds, rate
        self.rng = random.Random(seed)

    @classmethod
    def for_tokenizer(cls, tokenizer, **options) -> TokenAugmenter:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(tokenizer.all_special_ids, pad, tokenizer.mask_token_id, **options)

    def __call__(self, batch: dict) -> dict:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        rows = [self.perturb(ids[i][mask[i].bool()].tolist(), self.rng.choice(self.kinds)) for i in range(len(ids))]
        width = max(len(r) for r in rows)
        out = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
        out["input_ids"] = torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows], dtype=ids.dtype)
        out["attention_mask"] = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=mask.dtype)
        if "token_type_ids" in batch:  # single sentences: all zero
            out["token_type_ids"] = torch.zeros_like(out["input_ids"])
        return out

    def perturb(self, tokens: list[int], kind: str) -> list[int]:
        """One sequence of real tokens (no padding) with augmentation `kind` applied at this rate."""
        free = [j for j, t in enumerate(tokens) if t not in self.special_ids]
        count = round(self.rate * len(free))
        if kind == "drop":
            gone = set(self.rng.sample(free, min(count, len(free) - 1))) if len(free) > 1 else set()
            return [t for j, t in enumerate(tokens) if j not in gone]
        tokens = list(tokens)
        if kind == "mask":
            for j in self.rng.sample(free, count):
                tokens[j] = self.mask_id
            return tokens
        chosen = self.rng.sample(free, min(len(free), 2 * max(1, round(count / 2)) if count else 0))
        for a, b in zip(chosen[::2], chosen[1::2]):
            tokens[a], tokens[b] = tokens[b], tokens[a]
        return tokens


def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Mean InfoNCE of queries ``q`` against their positives ``k`` (row i ↔ row i; all L2-normalised).

    With ``negatives`` (K × d, a MoCo queue) each query's logits are [q·k⁺, q·negatives] / τ with the
    positive first; without, they are q·kᵀ / τ over the batch, the positive on the diagonal."""
    if q.shape != k.shape:
        raise ConfigError(f"queries and keys must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if negatives is None:
        logits = q @ k.T
        targets = torch.arange(len(q), device=q.device)
    else:
        logits = torch.cat([(q * k).sum(-1, keepdim=True), q @ negatives.T], dim=1)
        targets = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits / temperature, targets)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class ContrastiveObjective(nn.Module):
    """``model`` (a classifier returning ``.loss`` and hidden states) whose training loss gains
    ``weight`` × InfoNCE between an input and an augmented view of it (see the module docstring).
    In eval mode, or on a batch without labels, it is ``model`` unchanged."""

    def __init__(self, model: nn.Module, augmenter: TokenAugmenter, weight: float = 0.1, temperature: float = 0.07,
                 negatives: str = "queue", queue_size: int = 1024, momentum: float = 0.99, seed: int = 0):
        super().__init__()
        if negatives not in NEGATIVES:
            raise ConfigError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        if not weight >= 0:
            raise ConfigError(f"weight must be >= 0, got {weight!r}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum!r}")
        if negatives == "queue" and (not isinstance(queue_size, int) or queue_size < 1):
            raise ConfigError(f"queue_size must be a positive int, got {queue_size!r}")
        self.model, self.augmenter = model, augmenter
        self.weight, self.temperature, self.negatives, self.momentum = weight, temperature, negatives, momentum
        self.last_contrastive_loss = float("nan")
        if negatives == "queue":
            self.key_encoder = copy.deepcopy(model).requires_grad_(False)
            width = model.config.hidden_size
            generator = torch.Generator().manual_seed(seed)
            # MoCo starts from random unit keys; real ones replace them first-in, first-out.
            self.register_buffer("queue", F.normalize(torch.randn(queue_size, width, generator=generator), dim=1))
            self.register_buffer("queue_next", torch.zeros((), dtype=torch.long))

    @property
    def config(self):
        return self.model.config

    def forward(self, **batch):
        if not self.training or "labels" not in batch or self.weight == 0:
            return self.model(**batch)
        out = self.model(**batch, output_hidden_states=True)
        q = F.normalize(mean_pool(out.hidden_states[-1], batch["attention_mask"]), dim=1)
        view = {k: v.to(q.device) for k, v in self.augmenter(batch).items() if k != "labels"}
        if self.negatives == "batch":
            k = F.normalize(mean_pool(self.model(**view, output_hidden_states=True).hidden_states[-1],
                                      view["attention_mask"]), dim=1)
            loss = info_nce(q, k, None, self.temperature)
        else:
            with torch.no_grad():
                hidden = self.key_encoder(**view, output_hidden_states=True).hidden_states[-1]
                k = F.normalize(mean_pool(hidden, view["attention_mask"]), dim=1)
            loss = info_nce(q, k, self.queue.clone(), self.temperature)
            self.enqueue(k)
        self.last_contrastive_loss = float(loss.detach())
        out.loss = out.loss + self.weight * loss
        return out

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` over the oldest entries of the queue (first in, first out, wrapping around)."""
        size = len(self.queue)
        slots = (int(self.queue_next) + torch.arange(len(keys))) % size
        self.queue[slots[-size:]] = keys[-size:].to(self.queue.dtype)
        self.queue_next.fill_((int(self.queue_next) + len(keys)) % size)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θ' ← m·θ' + (1 − m)·θ for every parameter the query model trains."""
        if self.negatives != "queue":
            return
        keys = dict(self.key_encoder.named_parameters())
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                keys[name].mul_(self.momentum).add_(p.detach(), alpha=1 - self.momentum)

    def hook_optimizer(self, optimizer: torch.optim.Optimizer):
        """Run ``momentum_update`` after every ``optimizer.step()``; petkit's trainer calls this itself."""
        return optimizer.register_step_post_hook(lambda _optimizer, _args, _kwargs: self.momentum_update())
