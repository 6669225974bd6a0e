"""Using several adapters of one base together at forward time: ensembles (`ensemble`)."""

from petkit.compose.ensemble import RULES, dempster_shafer, ensemble, fuse, member_logits

__all__ = ["RULES", "dempster_shafer", "ensemble", "fuse", "member_logits"]
