"""Tiny Time Mixers (TTM): a small TSMixer-style forecaster for pre-training on many series.

    scale (per window and channel) → patch → Linear(pl → d) → [resolution prefix token] →
    backbone: adaptive levels A−1 … 0 of TTM layers (patch mixer + feature mixer, channel-independent) →
    decoder: TTM layers at d_dec (+ channel mixer when decoder_mode="mix_channel", switched on at fine-tuning) →
    head: flatten → Linear → horizon, per channel → de-scale.

Follows the released modeling_tinytimemixer.py (see the spec, methods-extra.md §2); the exogenous
forecast-channel mixer is not built. Shapes: past (B, L, C) → forecast (B, H, C), in the input's units.
"""

from __future__ import annotations

import torch
from torch import nn

from petkit.core.errors import ConfigError

from .config import TTMConfig

SCALE_EPS = 1e-5


def standard_scale(past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RevIN-like "std" scaler over the context, per window and channel: (past − μ)/σ, μ, σ with
    σ = sqrt(var + 1e-5) (population variance, as the released scaler)."""
    mean = past.mean(dim=1, keepdim=True)
    std = torch.sqrt(past.var(dim=1, keepdim=True, unbiased=False) + SCALE_EPS)
    return (past - mean) / std, mean, std


def patchify(x: torch.Tensor, patch_length: int) -> torch.Tensor:
    """(B, L, C) → (B, C, L/pl, pl): non-overlapping patches, stride = patch length."""
    return x.transpose(1, 2).unfold(-1, patch_length, patch_length)


def split_patches(x: torch.Tensor, parts: int) -> torch.Tensor:
    """Adaptive patching: (…, n, d) → (…, n·parts, d/parts); each patch embedding becomes `parts`
    consecutive sub-patches (an embedding reshape, not a re-patching of the raw series)."""
    *lead, n, d = x.shape
    return x.reshape(*lead, n * parts, d // parts)


def merge_patches(x: torch.Tensor, parts: int) -> torch.Tensor:
    """The inverse of split_patches."""
    *lead, n, d = x.shape
    return x.reshape(*lead, n // parts, d * parts)


class Gate(nn.Module):
    """x ⊙ softmax(W x + b) over the mixed (last) axis."""

    def __init__(self, size: int):
        super().__init__()
        self.proj = nn.Linear(size, size)

    def forward(self, x):
        return x * torch.softmax(self.proj(x), dim=-1)


class MLP(nn.Module):
    def __init__(self, size: int, expansion: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(size, size * expansion), nn.Linear(size * expansion, size)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(nn.functional.gelu(self.fc1(x)))))


class PatchMixer(nn.Module):
    """x + Gate(MLP over the patch axis of LN(x)): mixes along time."""

    def __init__(self, patches: int, d: int, cfg: TTMConfig, dropout: float):
        super().__init__()
        self.norm, self.mlp, self.gate = nn.LayerNorm(d), MLP(patches, cfg.expansion, dropout), Gate(patches)

    def forward(self, x):  # (B, C, n, d)
        y = self.norm(x).transpose(-1, -2)
        return x + self.gate(self.mlp(y)).transpose(-1, -2)


class FeatureMixer(nn.Module):
    """x + Gate(MLP over the features of LN(x))."""

    def __init__(self, d: int, cfg: TTMConfig, dropout: float):
        super().__init__()
        self.norm, self.mlp, self.gate = nn.LayerNorm(d), MLP(d, cfg.expansion, dropout), Gate(d)

    def forward(self, x):
        return x + self.gate(self.mlp(self.norm(x)))


class ChannelMixer(nn.Module):
    """x + MLP(Gate(LN(x))) over the channel axis (the gate comes before the MLP here, as released)."""

    def __init__(self, d: int, cfg: TTMConfig, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.gate, self.mlp = Gate(cfg.num_channels), MLP(cfg.num_channels, cfg.expansion, dropout)

    def forward(self, x):  # (B, C, n, d) → mix over C
        y = self.norm(x).permute(0, 2, 3, 1)
        return x + self.mlp(self.gate(y)).permute(0, 3, 1, 2)


class TTMLayer(nn.Module):
    """[channel mixer] → patch mixer (only when there is more than one patch) → feature mixer."""

    def __init__(self, patches: int, d: int, cfg: TTMConfig, dropout: float, mix_channel: bool):
        super().__init__()
        self.channel_mixer = ChannelMixer(d, cfg, dropout) if mix_channel else None
        self.patch_mixer = PatchMixer(patches, d, cfg, dropout) if patches > 1 else None
        self.feature_mixer = FeatureMixer(d, cfg, dropout)

    def forward(self, x):
        if self.channel_mixer is not None:
            if x.shape[1] != self.channel_mixer.gate.proj.in_features:
                raise ConfigError(f"the decoder mixes {self.channel_mixer.gate.proj.in_features} channels, "
                                  f"the input has {x.shape[1]}")
            x = self.channel_mixer(x)
        if self.patch_mixer is not None:
            x = self.patch_mixer(x)
        return self.feature_mixer(x)


class AdaptiveLevel(nn.Module):
    """num_layers TTM layers on the patch embeddings split into `parts` sub-patches each."""

    def __init__(self, parts: int, patches: int, cfg: TTMConfig):
        super().__init__()
        self.parts = parts
        self.layers = nn.ModuleList(TTMLayer(patches * parts, cfg.d_model // parts, cfg, cfg.dropout, False)
                                    for _ in range(cfg.num_layers))

    def forward(self, x):
        x = split_patches(x, self.parts)
        for layer in self.layers:
            x = layer(x)
        return merge_patches(x, self.parts)


class ResolutionPrefix(nn.Module):
    """Emb(V, pl) → Linear(pl → (pl+d)/2) → GELU → Linear(→ d): one extra patch, a function of the resolution."""

    def __init__(self, cfg: TTMConfig):
        super().__init__()
        hidden = (cfg.patch_length + cfg.d_model) // 2
        self.embedding = nn.Embedding(cfg.frequency_vocab, cfg.patch_length)
        self.fc1, self.fc2 = nn.Linear(cfg.patch_length, hidden), nn.Linear(hidden, cfg.d_model)

    def forward(self, tokens):  # (B,) → (B, d)
        return self.fc2(nn.functional.gelu(self.fc1(self.embedding(tokens))))


class TTMBackbone(nn.Module):
    """Patch embedding, resolution prefix and the adaptive-patching encoder: frozen in head probing."""

    def __init__(self, cfg: TTMConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Linear(cfg.patch_length, cfg.d_model)
        self.prefix = ResolutionPrefix(cfg) if cfg.resolution_prefix else None
        patches = cfg.num_patches + (1 if cfg.resolution_prefix else 0)
        self.levels = nn.ModuleList(AdaptiveLevel(2 ** i, patches, cfg) for i in reversed(range(cfg.adaptive_levels)))

    def forward(self, scaled: torch.Tensor, frequency: torch.Tensor | None) -> torch.Tensor:
        x = self.patch_embed(patchify(scaled, self.cfg.patch_length))  # (B, C, n_p, d)
        if self.prefix is not None:
            if frequency is None:
                frequency = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            token = self.prefix(frequency)[:, None, None, :].expand(-1, x.shape[1], 1, -1)
            x = torch.cat([token, x], dim=2)  # patch 0 is the resolution prefix
        for level in self.levels:
            x = level(x)
        return x


class TTMDecoder(nn.Module):
    def __init__(self, cfg: TTMConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.d_model, cfg.decoder_d_model) if cfg.decoder_d_model != cfg.d_model else nn.Identity()
        patches = cfg.num_patches + (1 if cfg.resolution_prefix else 0)
        mix = cfg.decoder_mode == "mix_channel"
        self.layers = nn.ModuleList(TTMLayer(patches, cfg.decoder_d_model, cfg, cfg.head_dropout, mix)
                                    for _ in range(cfg.decoder_layers))

    def forward(self, x):
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class TinyTimeMixer(nn.Module):
    def __init__(self, cfg: TTMConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = TTMBackbone(cfg)
        self.decoder = TTMDecoder(cfg)
        patches = cfg.num_patches + (1 if cfg.resolution_prefix else 0)
        self.head = nn.Sequential(nn.Flatten(-2), nn.Dropout(cfg.head_dropout),
                                  nn.Linear(patches * cfg.decoder_d_model, cfg.horizon))

    def forward(self, past: torch.Tensor, frequency: torch.Tensor | None = None) -> torch.Tensor:
        """past (B, L, C) in data units → forecast (B, H, C) in the same units (de-scaled)."""
        scaled, mean, std = standard_scale(past)
        y = self.head(self.decoder(self.backbone(scaled, frequency)))  # (B, C, H)
        return y.transpose(1, 2) * std + mean


def with_decoder_mode(model: TinyTimeMixer, mode: str, num_channels: int = 1) -> TinyTimeMixer:
    """A copy of `model` whose decoder runs in `mode`; every shared weight is copied, the new channel
    mixers start randomly initialised (how the released code switches mix_channel on for fine-tuning)."""
    new = TinyTimeMixer(model.cfg.replace(decoder_mode=mode, num_channels=num_channels))
    shared = {k: v for k, v in model.state_dict().items() if ".channel_mixer." not in k}
    missing, unexpected = new.load_state_dict(shared, strict=False)
    assert not unexpected and all(".channel_mixer." in k for k in missing), (missing, unexpected)
    return new


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
