"""Using several models or adapters together at forward time: ensembles of adapters (`ensemble`) and
emulated fine-tuning at decoding time (`eft`)."""

from petkit.compose.eft import EFT, SpeculativeStats, sampling_probs, verify
from petkit.compose.ensemble import RULES, dempster_shafer, ensemble, fuse, member_logits

__all__ = ["EFT", "RULES", "SpeculativeStats", "dempster_shafer", "ensemble", "fuse", "member_logits", "sampling_probs",
           "verify"]
