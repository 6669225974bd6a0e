"""Time-series forecasting: Tiny Time Mixers (TTM), pre-trained on a pool of series and fine-tuned
zero-/few-shot (docs/timeseries.md)."""

from .config import FREQUENCY_TOKENS, TTMConfig, frequency_token
from .model import TinyTimeMixer, count_parameters, with_decoder_mode

__all__ = ["FREQUENCY_TOKENS", "TTMConfig", "TinyTimeMixer", "count_parameters", "frequency_token", "with_decoder_mode"]
