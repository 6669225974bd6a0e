"""TTMConfig: the shape of a Tiny Time Mixer, validated on construction.

Defaults are the spec's CPU-sized mini-TTM (context 64, horizon 12, patches of 8, d = 32, two adaptive
patching levels, d_dec = 16); the released 512→96 model is the same code at pl 64, d 192, A 3, d_dec 128.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from petkit.core.errors import ConfigError

# Resolution token ids: the released DEFAULT_FREQUENCY_MAPPING (oov 0 .. W 9) extended with the
# monthly, quarterly and yearly resolutions the statsmodels series have (the released mapping lacks them).
FREQUENCY_TOKENS = {"oov": 0, "min": 1, "2min": 2, "5min": 3, "10min": 4, "15min": 5, "30min": 6,
                    "h": 7, "d": 8, "W": 9, "M": 10, "Q": 11, "Y": 12}
DECODER_MODES = ("common_channel", "mix_channel")


@dataclass(frozen=True)
class TTMConfig:
    context_length: int = 64
    horizon: int = 12
    patch_length: int = 8
    d_model: int = 32
    adaptive_levels: int = 2          # A: level i splits each patch embedding into 2**i sub-patches
    num_layers: int = 2               # TTM layers per adaptive level
    decoder_d_model: int = 16
    decoder_layers: int = 2
    dropout: float = 0.2
    head_dropout: float = 0.2
    resolution_prefix: bool = True    # prepend a learned resolution token as patch 0
    frequency_vocab: int = len(FREQUENCY_TOKENS)
    decoder_mode: str = "common_channel"  # "mix_channel": the decoder also mixes channels (fine-tuning only)
    num_channels: int = 1             # only the channel mixer depends on it
    expansion: int = 2                # MLP width factor of every mixer

    def __post_init__(self):
        for name in ("context_length", "horizon", "patch_length", "d_model", "adaptive_levels", "num_layers",
                     "decoder_d_model", "decoder_layers", "frequency_vocab", "num_channels", "expansion"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.context_length % self.patch_length:
            raise ConfigError(f"context_length {self.context_length} is not divisible by patch_length "
                              f"{self.patch_length}: pick a context that is a whole number of patches")
        if self.d_model % 2 ** (self.adaptive_levels - 1):
            raise ConfigError(f"d_model {self.d_model} must be divisible by 2**(adaptive_levels-1) = "
                              f"{2 ** (self.adaptive_levels - 1)} so every level can split the patch embeddings")
        for name in ("dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.decoder_mode not in DECODER_MODES:
            raise ConfigError(f"decoder_mode must be one of {DECODER_MODES}, got {self.decoder_mode!r}")

    @property
    def num_patches(self) -> int:
        return self.context_length // self.patch_length

    def replace(self, **changes) -> TTMConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TTMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            import warnings
            warnings.warn(f"TTM config keys {unknown} are unknown to this petkit version and are ignored", stacklevel=2)
        return cls(**{k: v for k, v in values.items() if k in known})


def frequency_token(name: str) -> int:
    """The resolution token id of a frequency name ("M", "Q", "W", ...)."""
    if name not in FREQUENCY_TOKENS:
        raise ConfigError(f"unknown frequency {name!r}: use one of {', '.join(FREQUENCY_TOKENS)}")
    return FREQUENCY_TOKENS[name]
