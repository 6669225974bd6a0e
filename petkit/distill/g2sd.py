"""G2SD — generic-to-specific distillation (Huang et al., CVPR 2023), with BERT in place of the MAE ViTs.

Generic stage (``generic_distill``), on unlabelled text, teacher frozen:

    each step: noise ~ U(0,1)^{B×L}; per sequence the ⌈ρ·n⌉ non-special tokens with the smallest noise
               are replaced by [MASK]; teacher and student read the SAME masked ids
    t = LayerNorm_noaffine(teacher hidden states after block ``teacher_layer``)
    s = feature_head(student last hidden states)          feature_head: Linear(d_s→d_t) → GELU → Linear(d_t→d_t)
    L = SmoothL1_β=2(s, t), mean over all non-pad tokens   (supervise_all=False: the masked tokens only)
    AdamW β = (0.9, 0.95), weight decay 0.05, linear warmup then cosine decay

Specific stage (``specific_distill``), on a labelled task, DeiT-style:

    input  [CLS] [DIST] tok_1 … tok_n      [DIST] = one learned embedding, inserted after [CLS]
    L = (1 − λ)·CE(cls_head(h_CLS), y) + λ·CE(dist_head(h_DIST), argmax teacher(x)),   λ = ½ (hard distillation)
    inference: the two heads' softmax averaged (DeiT); ``logits`` returned are log of that mean
    teacher = None: one head on [CLS], plain CE (the "from scratch" baseline)

Mapping from the vision code, and choices the text setting forces:

- Masking. MAE drops the masked patches from the student encoder and lets a decoder fill mask tokens;
  a BERT has no encoder/decoder split, so both models read the sequence with [MASK] in place
  (SimMIM-style). The default ratio ρ = 0.15 is the analogue of the paper's 0.75, which is the ratio
  its teacher was pre-trained with: MiniLM's BERT lineage was pre-trained with 15% masking. ρ must
  lie in (0, 1). Special tokens and padding are never masked; every sequence gets ≥ 1 masked token.
- Target layer. The paper reads the teacher decoder's 4th block. MiniLM has no decoder; the default
  reads its last block (``teacher_layer=None``), the representation a downstream fine-tune starts from.
- ``supervise_all=True`` (all non-pad tokens) is the released code's default and ours; the paper's
  text does not single out the masked tokens. The code's encoder-feature loss has weight 0 there and is
  left out here.
- Teacher labels. The released code recomputes the teacher per step because mixup/cutmix change the
  input; text has no such augmentation here, so argmax teacher(x) is a constant per example and is
  computed once before training (``teacher_predictions``).
- Selection. ``specific_distill`` keeps the weights of the epoch with the best ``select`` score (dev
  accuracy in the benchmark) — the paper trains a fixed 200 epochs; with a few hundred labels on a CPU
  early stopping is the honest use of a dev set.

Both stages train the student in place. Everything is validated before the first step, so an invalid
call leaves the models unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers.modeling_outputs import SequenceClassifierOutput

from petkit.core.errors import ConfigError
from petkit.data.batches import pad_batch, pad_token_id
from petkit.train.batching import batch_indices, epoch_order
from petkit.train.config import TrainConfig
from petkit.train.loop import build_optimizer, seed_everything
from petkit.train.schedule import lr_factor


# ----------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class StageConfig:
    """Optimisation of one stage: AdamW with ``betas``, linear warmup (a fraction of all steps), cosine decay."""

    lr: float = 1e-3
    epochs: int = 1
    batch_size: int = 32
    warmup: float = 0.1
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.95)
    max_grad_norm: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup is a fraction of all steps in [0, 1), got {self.warmup!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if k == "betas" else v for k, v in values.items()})


@dataclass(frozen=True)
class GenericConfig(StageConfig):
    """The generic stage: the paper's optimiser (β2 = 0.95, wd 0.05) and the masking of the module docstring."""

    mask_ratio: float = 0.15
    teacher_layer: int | None = None  # 1..teacher layers; None = the last
    supervise_all: bool = True
    smooth_l1_beta: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.mask_ratio, (int, float)) and 0 < self.mask_ratio < 1):
            raise ConfigError(f"mask_ratio must lie strictly between 0 and 1, got {self.mask_ratio!r}")
        if self.smooth_l1_beta <= 0:
            raise ConfigError(f"smooth_l1_beta must be > 0, got {self.smooth_l1_beta}")


@dataclass(frozen=True)
class SpecificConfig(StageConfig):
    """The specific stage: fine-tuning (AdamW's usual β2 = 0.999, clipping at 1) with distillation weight λ."""

    lr: float = 5e-4
    epochs: int = 10
    betas: tuple = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    distill_weight: float = 0.5  # λ

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.distill_weight, (int, float)) and 0 <= self.distill_weight <= 1):
            raise ConfigError(f"distill_weight (λ) must lie in [0, 1], got {self.distill_weight!r}")


# ------------------------------------------------------------------------------------------- data


class TextDataset(Dataset):
    """Unlabelled texts, tokenised once; items keep which tokens are special (never masked)."""

    def __init__(self, tokenizer, texts: Sequence[str], max_length: int = 64):
        if tokenizer.mask_token_id is None:
            raise ConfigError("the tokenizer has no [MASK] token: the generic stage masks its input with it")
        self.mask_token_id = tokenizer.mask_token_id
        self.pad_id = pad_token_id(tokenizer)
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_special_tokens_mask=True)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask") if k in enc]
        self.features = [{k: enc[k][i] for k in keys} for i in range(len(enc["input_ids"]))]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]

    def collate(self, features: Sequence[dict]) -> dict:
        batch = pad_batch(features, self.pad_id)
        if "special_tokens_mask" in batch:  # padded positions count as special: never masked
            batch["special_tokens_mask"] = batch["special_tokens_mask"] | (batch["attention_mask"] == 0)
        return batch


class _WithTeacherLabels(Dataset):
    def __init__(self, data: Dataset, teacher_labels: list[int]):
        self.data, self.teacher_labels = data, teacher_labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return {**self.data[i], "teacher_labels": self.teacher_labels[i]}

    def collate(self, features: Sequence[dict]) -> dict:
        return self.data.collate(features)


# ---------------------------------------------------------------------------------- generic stage


def shared_mask(maskable: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which tokens to mask: per row the ⌈ratio·n⌉ maskable ones (≥ 1) with the smallest U(0,1) noise.

    One draw per batch, used for teacher and student alike (MAE's argsort-of-noise masking).
    """
    noise = torch.rand(maskable.shape, generator=generator, device=maskable.device)
    noise = noise.masked_fill(~maskable, 2.0)  # never picked before a maskable token
    counts = (maskable.sum(1).float() * ratio).ceil().clamp(min=1).long()
    rank = noise.argsort(1).argsort(1)  # rank of each position's noise within its row
    return (rank < counts[:, None]) & maskable


def generic_loss(student_features: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor,
                 masked: torch.Tensor, supervise_all: bool = True, beta: float = 2.0) -> torch.Tensor:
    """SmoothL1_β between the student's projected features and LayerNorm_noaffine(teacher hidden states)."""
    target = F.layer_norm(teacher_hidden.detach(), teacher_hidden.shape[-1:])
    keep = attention_mask.bool() if supervise_all else attention_mask.bool() & masked
    per_token = F.smooth_l1_loss(student_features, target, beta=beta, reduction="none").mean(-1)
    return per_token[keep].mean()


@dataclass
class GenericOutput:
    loss: torch.Tensor
    masked: torch.Tensor
    student_features: torch.Tensor
    teacher_features: torch.Tensor


class FeatureDistiller(nn.Module):
    """Student + ``feature_head`` trained to predict a frozen teacher's normalised hidden states."""

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: GenericConfig, mask_token_id: int):
        super().__init__()
        self.teacher, self.student, self.cfg, self.mask_token_id = teacher, student, cfg, mask_token_id
        width_s, width_t = student.config.hidden_size, teacher.config.hidden_size
        self.feature_head = nn.Sequential(nn.Linear(width_s, width_t), nn.GELU(), nn.Linear(width_t, width_t))
        self.teacher_layer = cfg.teacher_layer or teacher.config.num_hidden_layers
        self.teacher.requires_grad_(False)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # the masks' own stream, apart from dropout's

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: no dropout in the targets
        return self

    def forward(self, input_ids, attention_mask, special_tokens_mask=None, token_type_ids=None,
                generator: torch.Generator | None = None) -> GenericOutput:
        maskable = attention_mask.bool() if special_tokens_mask is None else ~special_tokens_mask.bool()
        masked = shared_mask(maskable & attention_mask.bool(), self.cfg.mask_ratio, generator or self.generator)
        ids = input_ids.masked_fill(masked, self.mask_token_id)
        inputs = {"input_ids": ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        with torch.no_grad():
            hidden = self.teacher(**inputs, output_hidden_states=True).hidden_states[self.teacher_layer]
        features = self.feature_head(self.student(**inputs).last_hidden_state)
        loss = generic_loss(features, hidden, attention_mask, masked, self.cfg.supervise_all, self.cfg.smooth_l1_beta)
        return GenericOutput(loss, masked, features, hidden)


@dataclass
class StageResult:
    model: nn.Module                      # FeatureDistiller (generic) or DistillationTokenClassifier (specific)
    history: list[dict] = field(default_factory=list)  # one record per epoch
    best_epoch: int | None = None         # the epoch kept (specific stage with ``select``)
    seconds: float = 0.0


def generic_distill(teacher: nn.Module, student: nn.Module, data: TextDataset, cfg: GenericConfig = GenericConfig(),
                    *, log: Callable[[str], None] | None = None) -> StageResult:
    """Generic stage: train ``student`` (in place) and a new feature head on unlabelled ``data``."""
    check_pair(teacher, student)
    if not isinstance(cfg, GenericConfig):
        raise ConfigError(f"generic_distill takes a GenericConfig, got {type(cfg).__name__}")
    layers = teacher.config.num_hidden_layers
    if cfg.teacher_layer is not None and not (isinstance(cfg.teacher_layer, int) and 1 <= cfg.teacher_layer <= layers):
        raise ConfigError(f"teacher_layer must be in 1..{layers} (the teacher's blocks), got {cfg.teacher_layer!r}")
    if not len(data):
        raise ConfigError("the unlabelled data is empty")
    if not hasattr(data, "mask_token_id"):
        raise ConfigError("the generic stage needs a TextDataset (it knows the [MASK] id and the special tokens)")
    distiller = FeatureDistiller(teacher, student, cfg, data.mask_token_id)
    return _fit(distiller, data, cfg, log=log)


def check_pair(teacher: nn.Module, student: nn.Module) -> None:
    """Teacher and student must read the same token ids."""
    vt, vs = teacher.config.vocab_size, student.config.vocab_size
    if vt != vs:
        raise ConfigError(f"teacher and student vocabularies differ ({vt} vs {vs} ids): they must read the same "
                          f"tokens — build the student with student_config(teacher.config, ...)")


# --------------------------------------------------------------------------------- specific stage


class DistillationTokenClassifier(nn.Module):
    """A BERT encoder with DeiT's distillation token and two linear heads (or one head, without it)."""

    def __init__(self, encoder: nn.Module, num_labels: int, distillation_token: bool = True,
                 distill_weight: float = 0.5):
        super().__init__()
        if not isinstance(num_labels, int) or num_labels < 2:
            raise ConfigError(f"num_labels must be an int >= 2, got {num_labels!r}")
        self.encoder, self.num_labels, self.distill_weight = encoder, num_labels, distill_weight
        width = encoder.config.hidden_size
        self.cls_head = nn.Linear(width, num_labels)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, width)) if distillation_token else None
        self.dist_head = nn.Linear(width, num_labels) if distillation_token else None
        if distillation_token:
            nn.init.trunc_normal_(self.dist_token, std=0.02)  # DeiT's init

    @property
    def config(self):
        return self.encoder.config

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None, teacher_labels=None):
        if input_ids.shape[1] + (self.dist_token is not None) > self.config.max_position_embeddings:
            raise ConfigError(f"{input_ids.shape[1]} tokens plus the distillation token exceed the student's "
                              f"{self.config.max_position_embeddings} positions: truncate one token shorter")
        embeds = self.encoder.embeddings.word_embeddings(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if self.dist_token is not None:  # [CLS] [DIST] tokens...: one more position, attended to, type 0
            embeds = torch.cat([embeds[:, :1], self.dist_token.expand(len(embeds), -1, -1), embeds[:, 1:]], 1)
            attention_mask = torch.cat([attention_mask[:, :1], attention_mask[:, :1], attention_mask[:, 1:]], 1)
            token_type_ids = torch.cat([token_type_ids[:, :1], token_type_ids[:, :1], token_type_ids[:, 1:]], 1)
        hidden = self.encoder(inputs_embeds=embeds, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        cls_logits = self.cls_head(hidden[:, 0])
        if self.dist_head is None:
            loss = F.cross_entropy(cls_logits, labels) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=cls_logits)
        dist_logits = self.dist_head(hidden[:, 1])
        logits = torch.logsumexp(torch.stack([cls_logits.log_softmax(-1), dist_logits.log_softmax(-1)]), 0) - math.log(2)
        loss = None
        if self.training and labels is not None:
            if teacher_labels is None:
                raise ConfigError("training with a distillation token needs teacher_labels (argmax of the teacher) "
                                  "in every batch; specific_distill adds them")
            lam = self.distill_weight
            loss = (1 - lam) * F.cross_entropy(cls_logits, labels) + lam * F.cross_entropy(dist_logits, teacher_labels)
        elif labels is not None:
            loss = F.nll_loss(logits, labels)  # of the averaged prediction, the one that is scored
        return SequenceClassifierOutput(loss=loss, logits=logits)


@torch.no_grad()
def teacher_predictions(teacher: nn.Module, data: Dataset, batch_size: int = 64) -> list[int]:
    """argmax of the teacher's logits for every example of ``data`` (in order), in eval mode."""
    was_training = teacher.training
    teacher.eval()
    out = []
    try:
        for idx in batch_indices(range(len(data)), batch_size):
            batch = data.collate([data[i] for i in idx])
            batch.pop("labels", None)
            out += teacher(**batch).logits.argmax(-1).tolist()
    finally:
        teacher.train(was_training)
    return out


def specific_distill(student: nn.Module, train_data: Dataset, num_labels: int,
                     cfg: SpecificConfig = SpecificConfig(), *, teacher: nn.Module | None = None,
                     teacher_labels: Sequence[int] | None = None, select: Callable[[nn.Module], float] | None = None,
                     log: Callable[[str], None] | None = None) -> StageResult:
    """Specific stage: fine-tune ``student`` (in place) on labelled ``train_data`` (a ClassificationDataset).

    With ``teacher`` (a classifier whose ``.logits`` cover the same labels): distillation token and hard
    distillation; without: a plain classifier on [CLS] (the from-scratch baseline). ``select(model)``
    scores the model after every epoch (higher is better); the best epoch's weights are kept.
    ``teacher_labels``: ``teacher_predictions(teacher, train_data)`` computed once by the caller (several
    students, one teacher); the teacher is then only checked, not run.
    """
    if not isinstance(cfg, SpecificConfig):
        raise ConfigError(f"specific_distill takes a SpecificConfig, got {type(cfg).__name__}")
    if not len(train_data):
        raise ConfigError("the labelled training data is empty")
    if teacher_labels is not None and (teacher is None or len(teacher_labels) != len(train_data)):
        raise ConfigError(f"teacher_labels need their teacher and one label per training example "
                          f"({len(train_data)}), got {len(teacher_labels)}")
    model = DistillationTokenClassifier(student, num_labels, teacher is not None, cfg.distill_weight)
    data = train_data
    if teacher is not None:
        check_pair(teacher, student)
        labels = list(teacher_labels) if teacher_labels is not None else teacher_predictions(teacher, train_data)
        if max(labels) >= num_labels:
            raise ConfigError(f"the teacher predicts label {max(labels)} but the task has {num_labels} labels")
        data = _WithTeacherLabels(train_data, labels)
    return _fit(model, data, cfg, select=select, log=log)


# --------------------------------------------------------------------------------- the shared loop


def _fit(model: nn.Module, data: Dataset, cfg: StageConfig, *, select=None, log=None) -> StageResult:
    """Epochs of seeded batches, AdamW with cfg.betas, warmup + cosine; optional best-epoch selection."""
    optimizer, named = build_optimizer(model, TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay))
    for group in optimizer.param_groups:
        group["betas"] = tuple(cfg.betas)
    seed_everything(cfg.seed)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = math.ceil(cfg.warmup * total)
    result, best, best_state, step, started = StageResult(model), None, None, 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        losses = []
        for idx in batch_indices(epoch_order(len(data), cfg.seed, epoch), cfg.batch_size):
            batch = data.collate([data[i] for i in idx])
            loss = model(**batch).loss
            loss.backward()
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total, warmup, "cosine")
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for _, p in named], cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
        record = {"epoch": epoch + 1, "step": step, "loss": sum(losses) / len(losses),
                  "seconds": round(time.perf_counter() - started, 1)}
        if select is not None:
            model.eval()
            record["select"] = float(select(model))
            if best is None or record["select"] > best:
                best, result.best_epoch = record["select"], epoch + 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        result.history.append(record)
        if log:
            log("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result
