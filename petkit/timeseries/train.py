"""Pre-training on a pool of series, then zero-shot, head-probing or full fine-tuning on a target series.

Every model here sees standardised series (data.standardised) as univariate channels, unless the
decoder mixes channels. The loss is the MSE of the de-scaled forecast against the raw targets (the
model de-scales its own output). Optimiser: AdamW with OneCycleLR, early stopping on the validation
windows with the best state kept, as the released scripts (with a fixed learning rate instead of their
LR finder).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from petkit.core.errors import ConfigError

from .config import TTMConfig, frequency_token
from .data import Series, channel_independent, few_shot, require_windows, split_windows, standardised
from .model import TinyTimeMixer, with_decoder_mode

MODES = ("zero", "probe", "head", "full")


@dataclass(frozen=True)
class Windows:
    """A batch source: past (N, L, C), future (N, H, C), one resolution token per window."""
    past: np.ndarray
    future: np.ndarray
    tokens: np.ndarray

    def __len__(self):
        return len(self.past)

    @classmethod
    def concat(cls, parts: list[Windows]) -> Windows:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ConfigError("no forecast windows: every series is shorter than context + horizon")
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("past", "future", "tokens")))


def series_windows(series: Series, cfg: TTMConfig, split: str, fraction: float | None = None,
                   mix_channels: bool = False) -> Windows:
    """One split's windows of a standardised series, channel-independent unless mix_channels."""
    past, future = split_windows(series, cfg.context_length, cfg.horizon, split)
    require_windows(series, past, split, cfg.context_length, cfg.horizon)
    if fraction is not None:
        past, future = few_shot(past, future, fraction)
    if not mix_channels:
        past, future = channel_independent(past, future)
    return Windows(past, future, np.full(len(past), frequency_token(series.frequency), dtype=np.int64))


@dataclass
class FitSettings:
    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.01
    patience: int = 10
    seed: int = 0
    history: list = field(default_factory=list)


def set_trainable(model: TinyTimeMixer, mode: str) -> None:
    """zero: nothing; probe: decoder + head (the released few-shot recipe: backbone frozen); head: the
    forecast head alone; full: everything."""
    if mode not in MODES:
        raise ConfigError(f"fine-tuning mode must be one of {MODES}, got {mode!r}")
    for name, p in model.named_parameters():
        p.requires_grad = (mode == "full" or (mode == "probe" and not name.startswith("backbone."))
                           or (mode == "head" and name.startswith("head.")))


def _tensors(w: Windows):
    return torch.from_numpy(w.past), torch.from_numpy(w.future), torch.from_numpy(w.tokens)


@torch.no_grad()
def predict(model: TinyTimeMixer, past: np.ndarray, tokens: np.ndarray | int, batch_size: int = 512) -> np.ndarray:
    model.eval()
    tokens = np.broadcast_to(np.asarray(tokens, dtype=np.int64), (len(past),)).copy()
    out = [model(torch.from_numpy(np.ascontiguousarray(past[i:i + batch_size])),
                 torch.from_numpy(np.ascontiguousarray(tokens[i:i + batch_size]))).numpy()
           for i in range(0, len(past), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.cfg.horizon, past.shape[2]), np.float32)


def validation_loss(model: TinyTimeMixer, val: Windows) -> float:
    return float(np.mean((predict(model, val.past, val.tokens) - val.future) ** 2))


def fit(model: TinyTimeMixer, train: Windows, val: Windows | None, settings: FitSettings) -> TinyTimeMixer:
    """Train the parameters that require grad; keep the state with the lowest validation loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or settings.epochs == 0:
        return model
    generator = torch.Generator().manual_seed(settings.seed)
    past, future, tokens = _tensors(train)
    steps_per_epoch = math.ceil(len(past) / settings.batch_size)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, epochs=settings.epochs,
                                                   steps_per_epoch=steps_per_epoch)
    best, best_state, waited = math.inf, None, 0
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(past), generator=generator)
        total = 0.0
        for i in range(0, len(past), settings.batch_size):
            idx = order[i:i + settings.batch_size]
            loss = torch.nn.functional.mse_loss(model(past[idx], tokens[idx]), future[idx])  # de-scaled units
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        score = validation_loss(model, val) if val is not None and len(val) else total / len(past)
        settings.history.append({"epoch": epoch, "train_loss": total / len(past), "val_loss": score})
        if score < best:
            best, best_state, waited = score, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= settings.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model


def pretrain(pool: list[Series], cfg: TTMConfig, settings: FitSettings) -> TinyTimeMixer:
    """A TTM trained on every pool series (standardised, univariate); the last 10% of each series in time
    is the validation set for early stopping."""
    if cfg.decoder_mode != "common_channel":
        raise ConfigError("pre-training is channel-independent: decoder_mode must be 'common_channel' "
                          "(mix_channel is switched on at fine-tuning)")
    fractions = (0.9, 0.1, 0.0)
    train, val = [], []
    for s in pool:
        s = standardised(s, fractions)
        for split, bucket in (("train", train), ("val", val)):
            past, future = channel_independent(*split_windows(s, cfg.context_length, cfg.horizon, split, fractions))
            bucket.append(Windows(past, future, np.full(len(past), frequency_token(s.frequency), np.int64)))
    torch.manual_seed(settings.seed)
    model = TinyTimeMixer(cfg)
    set_trainable(model, "full")
    return fit(model, Windows.concat(train), Windows.concat(val), settings)


def finetune(model: TinyTimeMixer, series: Series, mode: str, fraction: float | None, settings: FitSettings,
             mix_channels: bool = False) -> TinyTimeMixer:
    """A fine-tuned copy of `model` on the target series' (standardised) first `fraction` of training
    windows (None: all), early-stopped on its validation windows. mix_channels switches the decoder's
    channel mixer on (new weights, random init) and trains on all channels together."""
    series, model = standardised(series), copy.deepcopy(model)
    if mix_channels:
        model = with_decoder_mode(model, "mix_channel", series.values.shape[1])
    set_trainable(model, mode)
    torch.manual_seed(settings.seed)
    train = series_windows(series, model.cfg, "train", fraction, mix_channels)
    val = series_windows(series, model.cfg, "val", None, mix_channels)
    return fit(model, train, val, settings)
