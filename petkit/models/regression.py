"""A continuous (regression) head on any transformers encoder or decoder, and VLA4CD's joint text + value loss.

    model = RegressionModel(AutoModel.from_pretrained(...), RegressionConfig(outputs=2))
    model.standardise(train_records)          # targets' mean/std, so predictions come back in these units
    am = petkit.adapt(model, LoraConfig(...))  # the head `regressor` trains with any method (train_head)
    out = am(**batch)                         # out.logits: predictions in original units; out.loss

Features: an encoder's pooled output (its pooler, or [CLS], or the mean of real tokens); a decoder's
hidden state at the last real (non-pad) token, which is where VLA4CD reads its action. With a causal-LM
backbone and `lm_weight > 0`, the same forward also scores text (`lm_labels`) and the loss is
`regression_weight * L_value + lm_weight * L_text` (VLA4CD/MIMO-VLA, spec methods-extra §3).

The head predicts standardised targets z = (y - mean) / std and the loss is taken on z (all outputs
weigh alike whatever their units); the mean and std are buffers of the model, saved in the adapter
folder's task.json (`task_file`) and restored on load (`load_task_file`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from transformers.utils import ModelOutput

from petkit.core.config import check
from petkit.core.errors import ConfigError
from petkit.models.pooling import masked_mean

LOSSES = ("mse", "huber")
POOLINGS = ("auto", "pooler", "cls", "mean", "last")
HEADS = ("linear", "mlp")
TASK = "regression"


@dataclass(frozen=True)
class RegressionConfig:
    """The head and its loss.

    - ``outputs``: how many values per example; ``names`` optionally names them.
    - ``loss``: ``mse``, or ``huber`` (smooth L1 with ``huber_delta``, on standardised targets).
    - ``pooling``: ``auto`` = the last real token on a decoder, the encoder's pooler where it has one,
      else [CLS]; or ``pooler``, ``cls``, ``mean`` (of real tokens), ``last``.
    - ``head``: ``linear``, or ``mlp`` (Linear-GELU-Linear, VLA4CD's paper; its released "MLP" has no
      nonlinearity, so it is a linear map: ``linear`` is the code's behaviour).
    - ``lm_weight`` / ``regression_weight``: the joint loss on a causal-LM backbone (VLA4CD: both 1);
      ``label_smoothing``: ε of the text loss, (1-ε)·NLL + ε·mean over the vocabulary of -log p
      (VLA4CD's code: 0.1; 0 = the model's own loss).
    """

    outputs: int = 1
    names: tuple = ()
    loss: str = "mse"
    huber_delta: float = 1.0
    pooling: str = "auto"
    head: str = "linear"
    dropout: float = 0.0
    lm_weight: float = 0.0
    regression_weight: float = 1.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        check(isinstance(self.outputs, int) and not isinstance(self.outputs, bool) and self.outputs >= 1,
              f"outputs must be a positive int, got {self.outputs!r}")
        check(not self.names or len(self.names) == self.outputs,
              f"{len(self.names)} names for {self.outputs} outputs: give one name per output, or none")
        check(self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        check(self.pooling in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        check(self.head in HEADS, f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        for name in ("huber_delta", "dropout", "lm_weight", "regression_weight", "label_smoothing"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
                  f"{name} must be a number >= 0, got {value!r}")
        check(self.huber_delta > 0, f"huber_delta must be > 0, got {self.huber_delta}")
        check(self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        check(self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check(self.lm_weight > 0 or self.regression_weight > 0, "lm_weight and regression_weight are both 0: no loss")

    def to_dict(self) -> dict:
        return {**asdict(self), "names": list(self.names)}


@dataclass
class RegressionOutput(ModelOutput):
    """``logits``: predictions in the targets' original units, (batch, outputs). ``loss``: the weighted sum
    of ``regression_loss`` (on standardised targets) and ``lm_loss`` (joint training only)."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    regression_loss: Optional[torch.Tensor] = None
    lm_loss: Optional[torch.Tensor] = None
    lm_logits: Optional[torch.Tensor] = None


class RegressionHead(nn.Module):
    """hidden features -> standardised targets."""

    def __init__(self, hidden: int, outputs: int, kind: str = "linear", dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if kind == "mlp":
            layers += [nn.Linear(hidden, hidden), nn.GELU()]
        layers.append(nn.Linear(hidden, outputs))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):  # as transformers initialises a fresh classifier
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def is_causal_lm(backbone: nn.Module) -> bool:
    return callable(getattr(backbone, "get_output_embeddings", None)) and backbone.get_output_embeddings() is not None \
        and not getattr(backbone.config, "is_encoder_decoder", False)


class RegressionModel(nn.Module):
    """A backbone (``AutoModel`` encoder, or a causal LM) with a continuous head; see the module docstring."""

    def __init__(self, backbone: nn.Module, config: RegressionConfig | None = None):
        super().__init__()
        self.backbone = backbone
        self.regression = config or RegressionConfig()
        self.decoder = is_causal_lm(backbone)
        if self.regression.lm_weight > 0 and not self.decoder:
            raise ConfigError(f"lm_weight={self.regression.lm_weight} trains text too, which needs a causal-LM "
                              f"backbone; {type(backbone).__name__} has no LM head")
        hidden = getattr(backbone.config, "hidden_size", None) or getattr(backbone.config, "d_model", None)
        if not isinstance(hidden, int):
            raise ConfigError(f"cannot tell the hidden size of {type(backbone).__name__} (no config.hidden_size)")
        self.regressor = RegressionHead(hidden, self.regression.outputs, self.regression.head, self.regression.dropout)
        self.register_buffer("target_mean", torch.zeros(self.regression.outputs))
        self.register_buffer("target_std", torch.ones(self.regression.outputs))

    # transformers' Trainer and petkit's engine read these off the model they train
    @property
    def config(self):
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    @property
    def pooling(self) -> str:
        if self.regression.pooling != "auto":
            return self.regression.pooling
        if self.decoder:
            return "last"
        return "pooler" if getattr(self.backbone, "pooler", None) is not None else "cls"

    # -- standardisation ----------------------------------------------------------------------------
    def standardise(self, records_or_stats) -> RegressionModel:
        """Set the targets' mean and std from training records (``{"target": ...}``) or a (mean, std) pair."""
        from petkit.data.regression import check_targets, target_stats

        if isinstance(records_or_stats, tuple):
            mean, std = records_or_stats
        else:
            check_targets(records_or_stats, "standardise", self.regression.outputs)
            mean, std = target_stats(records_or_stats)
        self._set_stats(mean, std, "standardise")
        return self

    def _set_stats(self, mean, std, where: str) -> None:
        mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in (mean, std))
        if mean.numel() != self.regression.outputs or std.numel() != self.regression.outputs:
            raise ConfigError(f"{where}: {mean.numel()} means and {std.numel()} stds for a head of "
                              f"{self.regression.outputs} outputs")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ConfigError(f"{where}: means must be finite and stds finite and > 0, got {mean.tolist()} / "
                              f"{std.tolist()}")
        self.target_mean.copy_(mean)
        self.target_std.copy_(std)

    def task_file(self) -> dict:
        """What an adapter folder's task.json holds, so a reload predicts in the same units."""
        return {"task": TASK, **self.regression.to_dict(), "pooling_used": self.pooling,
                "mean": self.target_mean.tolist(), "std": self.target_std.tolist()}

    def load_task_file(self, saved: dict | None, where: str = "the adapter") -> None:
        """Check a saved task.json fits this model (same task and outputs) and restore its mean/std."""
        if saved is None or saved.get("task") != TASK:
            task = "classification or language-modelling" if saved is None else repr(saved.get("task"))
            raise ConfigError(f"{where} is a {task} adapter (no regression task.json); a RegressionModel takes "
                              f"regression adapters only")
        for key, ours in (("outputs", self.regression.outputs), ("head", self.regression.head),
                          ("pooling_used", self.pooling)):
            if saved.get(key) != ours:
                setting = key.replace("_used", "")
                raise ConfigError(f"{where} was trained with {setting}={saved.get(key)!r}; this model has {setting}="
                                  f"{ours!r}: build it with saved_config(folder) (RegressionConfig({setting}="
                                  f"{saved.get(key)!r}, ...))")
        self._set_stats(saved["mean"], saved["std"], where)

    # -- forward ------------------------------------------------------------------------------------
    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooled=None) -> torch.Tensor:
        """(batch, hidden) features of (batch, positions, hidden) states. Positions a model-level adapter
        put in front (prompt tuning) come first: features are read from the last mask-length positions."""
        if self.pooling == "pooler":
            if pooled is None:
                raise ConfigError(f"pooling='pooler', but {type(self.backbone).__name__} returns no pooler_output")
            return pooled
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        hidden = hidden[:, hidden.shape[1] - attention_mask.shape[1]:]
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "mean":
            return masked_mean(hidden, attention_mask)
        # the last real token: the highest position the mask keeps (right or left padding alike)
        positions = torch.arange(attention_mask.shape[1], device=hidden.device)
        last = (attention_mask.bool() * (positions + 1)).argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, input_ids=None, attention_mask=None, labels=None, lm_labels=None, **kwargs) -> RegressionOutput:
        if self.decoder:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=lm_labels,
                                output_hidden_states=True, **kwargs)
            hidden, pooled = out.hidden_states[-1], None
        else:
            if lm_labels is not None:
                raise ConfigError("lm_labels need a causal-LM backbone")
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            hidden, pooled = out.last_hidden_state, getattr(out, "pooler_output", None)
        z = self.regressor(self.features(hidden, attention_mask, pooled))
        predictions = z * self.target_std.to(z.dtype) + self.target_mean.to(z.dtype)
        result = RegressionOutput(logits=predictions)
        if self.decoder and lm_labels is not None:
            result.lm_logits = out.logits
            result.lm_loss = self._text_loss(out.logits, lm_labels) if self.regression.label_smoothing else out.loss
        if labels is not None:
            result.regression_loss = self.loss(z, labels)
        result.loss = self._total(result.regression_loss, result.lm_loss)
        return result

    def loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The regression loss of standardised predictions z against targets in original units."""
        labels = labels.reshape(labels.shape[0], -1) if labels.dim() != 2 else labels
        if labels.shape[-1] != self.regression.outputs:
            raise ConfigError(f"the batch has {labels.shape[-1]} target(s) per example but the head has "
                              f"{self.regression.outputs} output(s)")
        target = (labels.to(z.dtype) - self.target_mean.to(z.dtype)) / self.target_std.to(z.dtype)
        if self.regression.loss == "huber":
            return nn.functional.huber_loss(z, target, delta=self.regression.huber_delta)
        return nn.functional.mse_loss(z, target)

    def _text_loss(self, logits: torch.Tensor, lm_labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy with label smoothing, over the scored (not -100) positions."""
        logits = logits[:, -lm_labels.shape[1]:]  # a prompt-tuned model's logits are already cut to the input
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), lm_labels[:, 1:].flatten(),
                                           ignore_index=-100, label_smoothing=self.regression.label_smoothing)

    def _total(self, value_loss, text_loss):
        weights = self.regression
        if value_loss is None or text_loss is None or weights.lm_weight == 0:
            return value_loss if value_loss is not None else text_loss
        return weights.regression_weight * value_loss + weights.lm_weight * text_loss


def saved_config(folder) -> RegressionConfig | None:
    """The RegressionConfig an adapter folder was trained with (its task.json), or None for another task."""
    from petkit.core.files import read_task_file

    saved = read_task_file(Path(folder))
    if saved is None or saved.get("task") != TASK:
        return None
    return RegressionConfig(**{k: saved[k] for k in RegressionConfig.__dataclass_fields__ if k in saved})


def regression_model(backbone: nn.Module, config: RegressionConfig | None = None, **settings) -> RegressionModel:
    """``RegressionModel(backbone, RegressionConfig(**settings))``."""
    if config is not None and settings:
        raise ConfigError("give a RegressionConfig or its settings as keywords, not both")
    return RegressionModel(backbone, config or RegressionConfig(**settings))


__all__ = ["HEADS", "LOSSES", "POOLINGS", "RegressionConfig", "RegressionHead", "RegressionModel", "RegressionOutput",
           "regression_model", "saved_config"]
