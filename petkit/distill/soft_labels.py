"""Distillation on unlabelled data with the teacher's soft labels (Compressor, Shi et al., ASE 2022;
the code's `distill.py` + `models.py::distill_loss`).

The teacher (fine-tuned on the labelled half of the training data) reads the unlabelled half once,
offline; its logits z_T are stored. The student, which has its own tokenizer, then trains on the same
texts against them:

    L = T² · KL( softmax(z_T / T) ‖ softmax(z_S / T) )      mean over the batch, T = 1
      = soft-label cross-entropy minus the teacher's entropy (a constant)

AdamW, lr 1e-4, linear warmup over 10% of the steps then linear decay, 10 epochs, batch 16 [code];
the run is petkit's trainer (`petkit.train.train`), so seeding, clipping and schedules are the usual ones.

Paper/code difference. The released pipeline stores the teacher's *probabilities* (its fine-tuning
script saves the softmax output) and `distill_loss` applies softmax to them again, so the targets are
softmax(p_T / T): for two classes they never leave [0.27, 0.73]. The paper's description (and our
default) distils the teacher's own distribution; `double_softmax=True` reproduces the code's targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from petkit.core.errors import ConfigError
from petkit.data.batches import ClassificationDataset, pad_batch

DEFAULT_TRAIN = {"lr": 1e-4, "epochs": 10, "batch_size": 16, "warmup": 0.1, "schedule": "linear"}


def soft_targets(teacher_logits: torch.Tensor, temperature: float = 1.0, double_softmax: bool = False) -> torch.Tensor:
    """The distribution the student is pulled toward (see the module docstring for `double_softmax`)."""
    _check_temperature(temperature)
    z = teacher_logits.detach().float()
    if double_softmax:
        z = z.softmax(-1)
    return (z / temperature).softmax(-1)


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                    double_softmax: bool = False) -> torch.Tensor:
    """T² · KL(teacher ‖ student), averaged over the batch; no gradient reaches the teacher's logits."""
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} must have the same shape (same examples, same classes)")
    target = soft_targets(teacher_logits, temperature, double_softmax)
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(log_student, target, reduction="batchmean") * temperature ** 2


def teacher_logits(teacher: nn.Module, tokenizer, examples, max_length: int = 128, batch_size: int = 64) -> torch.Tensor:
    """The teacher's logits on `examples` ({"text", "text_pair"?}; any labels are ignored), computed once
    in eval mode without gradients; the teacher's mode is restored and its weights are not touched."""
    dataset = SoftLabelDataset(tokenizer, examples, None, max_length)
    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                batch = pad_batch([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))],
                                  dataset.pad_id)
                out.append(teacher(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    finally:
        teacher.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


class SoftLabelDataset(Dataset):
    """Tokenised texts with the teacher's logits. Batches carry `teacher_logits` and, only so that the
    trainer can count examples, `labels` = the teacher's argmax (the soft-label loss never reads them)."""

    def __init__(self, tokenizer, examples, logits: torch.Tensor | None, max_length: int = 128):
        examples = list(examples)
        if logits is not None and (logits.dim() != 2 or len(logits) != len(examples)):
            raise ConfigError(f"need one row of teacher logits per example: {len(examples)} examples, "
                              f"logits of shape {tuple(logits.shape)}")
        self.logits = logits
        # tokenised as any classification data; the placeholder label is dropped again
        tokenised = ClassificationDataset(tokenizer, [{**ex, "label": 0} for ex in examples], max_length)
        self.pad_id = tokenised.pad_id
        self.features = [{k: v for k, v in f.items() if k != "labels"} for f in tokenised.features]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        if self.logits is None:
            return self.features[i]
        return {**self.features[i], "teacher_logits": self.logits[i]}

    def collate(self, items) -> dict[str, torch.Tensor]:
        batch = pad_batch([{k: v for k, v in item.items() if k != "teacher_logits"} for item in items], self.pad_id)
        if items and "teacher_logits" in items[0]:
            batch["teacher_logits"] = torch.stack([item["teacher_logits"] for item in items])
            batch["labels"] = batch["teacher_logits"].argmax(-1)
        return batch


class SoftLabelStudent(nn.Module):
    """The student with its loss switched to `soft_label_loss` when a batch carries `teacher_logits`
    (cross-entropy on `labels` otherwise, e.g. when the trainer evaluates on a labelled dev set)."""

    def __init__(self, student: nn.Module, temperature: float = 1.0, double_softmax: bool = False):
        super().__init__()
        _check_temperature(temperature)
        self.student, self.temperature, self.double_softmax = student, temperature, double_softmax

    def forward(self, teacher_logits: torch.Tensor | None = None, labels: torch.Tensor | None = None, **inputs):
        from transformers.modeling_outputs import SequenceClassifierOutput  # lazily: importing petkit stays light

        logits = self.student(**inputs).logits
        if teacher_logits is not None:
            loss = soft_label_loss(logits, teacher_logits, self.temperature, self.double_softmax)
        else:
            loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def distill_soft_labels(student: nn.Module, tokenizer, examples, logits: torch.Tensor, cfg=None, *,
                        temperature: float = 1.0, double_softmax: bool = False, max_length: int = 128,
                        eval_data=None, progress: bool = False):
    """Train `student` (in place) on unlabelled `examples` against the teacher's `logits` (see
    `teacher_logits`); `cfg` is a `petkit.train.TrainConfig` (default: the code's settings,
    `DEFAULT_TRAIN`). Returns the trainer's `TrainResult`. Everything is checked before training starts."""
    from petkit.train import TrainConfig, train

    cfg = cfg or TrainConfig(**DEFAULT_TRAIN)
    num_labels = getattr(getattr(student, "config", None), "num_labels", None)
    if num_labels is not None and logits.dim() == 2 and logits.shape[1] != num_labels:
        raise ConfigError(f"the teacher's logits have {logits.shape[1]} classes and the student {num_labels}: "
                          f"distil between classifiers of the same label set")
    dataset = SoftLabelDataset(tokenizer, examples, logits.detach().float(), max_length)
    if not len(dataset):
        raise ConfigError("no unlabelled examples to distil on")
    wrapped = SoftLabelStudent(student, temperature, double_softmax)
    return train(wrapped, dataset, cfg, eval_data=eval_data, task="classification", progress=progress)


def _check_temperature(temperature: float) -> None:
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")
