"""CoOp / CoCoOp settings for a text-text dual encoder (spec methods-extra §5), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from petkit.core.errors import ConfigError

CLASS_POSITIONS = ("end", "middle", "front")
DEFAULT_N_CTX = 16  # CoOp's default context length when no init words are given


@dataclass(frozen=True)
class CoOpConfig:
    """``n_ctx``: number of learnable context vectors M (default 16, or the init words' token count).
    ``ctx_init``: words whose token embeddings initialise the context ("a news article about"); None →
    N(0, ``init_std``²). ``csc``: one context per class instead of one shared by all. ``class_position``:
    where the class name goes relative to the context. ``logit_scale``: the fixed s of s·cos (20 for
    sentence-transformers encoders; CLIP's is 100). ``suffix``: text after the name ("." as in CoOp).
    ``pool_exclude_ctx``: mean-pool the class prompt without the context positions (an option to test;
    the default pools every real token, as MiniLM does). ``cocoop``: add CoCoOp's meta-net, which shifts
    every context vector by π(x) computed from the input embedding; ``meta_reduction``: its bottleneck
    is d_in // meta_reduction (16 in CoCoOp)."""

    n_ctx: int | None = None
    ctx_init: str | None = None
    csc: bool = False
    class_position: str = "end"
    init_std: float = 0.02
    logit_scale: float = 20.0
    suffix: str = "."
    pool_exclude_ctx: bool = False
    cocoop: bool = False
    meta_reduction: int = 16

    def __post_init__(self):
        if self.n_ctx is not None and (isinstance(self.n_ctx, bool) or not isinstance(self.n_ctx, int)
                                       or self.n_ctx < 1):
            raise ConfigError(f"n_ctx (context length) must be a positive int, got {self.n_ctx!r}")
        if self.ctx_init is not None and not (isinstance(self.ctx_init, str) and self.ctx_init.strip()):
            raise ConfigError(f"ctx_init must be non-empty words or None, got {self.ctx_init!r}")
        if self.class_position not in CLASS_POSITIONS:
            raise ConfigError(f"class_position must be one of {CLASS_POSITIONS}, got {self.class_position!r}")
        if not self.init_std > 0:
            raise ConfigError(f"init_std must be > 0, got {self.init_std!r}")
        if not self.logit_scale > 0:
            raise ConfigError(f"logit_scale must be > 0, got {self.logit_scale!r}")
        if not isinstance(self.meta_reduction, int) or self.meta_reduction < 1:
            raise ConfigError(f"meta_reduction must be a positive int, got {self.meta_reduction!r}")
        if self.cocoop and self.csc:
            raise ConfigError("cocoop and csc cannot be combined: CoCoOp shifts one shared context")
