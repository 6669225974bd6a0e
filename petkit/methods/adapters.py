"""Bottleneck adapters: Houlsby, Pfeiffer, parallel and scaled parallel, sharing one bottleneck module.

A bottleneck is h ↦ up(act(down(h))) with down: d → m and up: m → d (both with biases), m the
bottleneck size (`bottleneck`, or d // `reduction_factor`). It is added to a sublayer's output y, on
the output projection of the sublayer (roles attn.out / mlp.out), before the model's own dropout,
residual and norm:

  houlsby          (Houlsby et al. 2019)  y' = y + s·A(y) after attention AND after the FFN
  pfeiffer         (Pfeiffer et al. 2021) y' = y + s·A(y) after the FFN only
  parallel         (He et al. 2022)       y' = y + s·A(x), x = the input of the sublayer block
  scaled_parallel  (He et al. 2022)       the same with s = 4 (the paper's scaling)

s is 1 unless `scale` says otherwise. Default targets: houlsby attn.out + mlp.out; the others mlp.out
(He et al. find the FFN the better place for a parallel adapter).

The parallel adapter on mlp.out reads the FFN block input, which is the input of mlp.in, not of
mlp.out (that one sees the d_ff-wide hidden activation); on attn.out it reads the input of the
attention's query projection (attn.q; attn.qkv on GPT-2). In pre-LN models that is the normalised
residual stream, in post-LN models (BERT) the residual stream itself, i.e. exactly what the sublayer
reads. The sibling is found by role in the same block, and a forward pre-hook registered on it at build
time captures its input for the adapter (`BlockInput`); `Delta.release()`, which the engine calls when
the adapter is deleted or unloaded, removes the hook. If that sibling is itself wrapped by a delta the
engine runs fused (LoRA as its only live adapter), its hook does not run and the adapter raises rather
than read a stale input.

Init (`init`): "zero_up" (default: down ~ N(0, 0.02), up = 0, biases 0, so the model is exactly the
base at init), "lora" (down Kaiming-uniform, up = 0: He et al.'s code), "houlsby" (both ~ N(0, 1e-2)
truncated at 2σ: the paper's near-identity) or "bert" (both ~ N(0, 0.02): AdapterHub's "bert" init,
not identity). Trainable: the bottleneck weights and biases, (d·m + m) + (m·d + d) per wrapped module.
Not mergeable (the activation is nonlinear). Houlsby also trains the layer norms; add a `layernorm`
adapter for that. AdapterHub applies the adapter after the sublayer's dropout; petkit wraps the
projection, so the model's dropout comes after it.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from petkit.core.config import AdapterConfig, check, is_number, is_pos_int
from petkit.core.errors import TargetError
from petkit.core.layer import Delta, in_out_features
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, MethodDefaults, register
from petkit.core.targeting import pattern_matcher
from petkit.core.unwrapped import named_base_modules
from petkit.models.taps import Captures

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_new": partial(F.gelu, approximate="tanh"),
               "silu": F.silu, "swish": F.silu, "tanh": torch.tanh}
INITS = ("zero_up", "lora", "houlsby", "bert")
VARIANTS = {"houlsby": ("attn.out", "mlp.out"), "pfeiffer": ("mlp.out",),
            "parallel": ("mlp.out",), "scaled_parallel": ("mlp.out",)}


# -- the shared bottleneck ---------------------------------------------------------------------------

class HeadsLinear(nn.Module):
    """`heads` independent d_in → m/heads projections, outputs concatenated (VL-PET's multi-head
    down-projection). The same function as one d_in → m Linear whose rows are grouped by head; kept as
    (heads, m/heads, d_in) so the file has the per-head layout of the paper."""

    def __init__(self, d_in: int, m: int, heads: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(heads, m // heads, d_in))
        self.bias = nn.Parameter(torch.empty(heads, m // heads))

    def forward(self, x):
        return F.linear(x, self.weight.flatten(0, 1), self.bias.flatten())


class Bottleneck(nn.Module):
    """h ↦ up(act(down(h))): d_in → m → d_out, with biases. heads > 1 splits down into heads."""

    def __init__(self, d_in: int, m: int, d_out: int, activation: str, heads: int = 1):
        super().__init__()
        self.down = skip_init(nn.Linear, d_in, m) if heads == 1 else HeadsLinear(d_in, m, heads)
        self.up = skip_init(nn.Linear, m, d_out)
        self.act = ACTIVATIONS[activation]

    def forward(self, h):
        return self.up(self.act(self.down(h)))

    @torch.no_grad()
    def reset(self, init: str) -> None:
        down = self.down.weight.view(-1, self.down.weight.shape[-1])  # (m, d_in), also for heads
        for bias in (self.down.bias, self.up.bias):
            nn.init.zeros_(bias)
        if init == "houlsby":
            for w in (down, self.up.weight):
                nn.init.trunc_normal_(w, std=1e-2, a=-2e-2, b=2e-2)
            return
        if init == "lora":
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        else:
            nn.init.normal_(down, std=0.02)
        if init == "bert":
            nn.init.normal_(self.up.weight, std=0.02)
        else:
            nn.init.zeros_(self.up.weight)


# -- the sublayer block's input, captured from a sibling module ----------------------------------------

# Which sibling reads the block input, per role of the wrapped module (GPT-2 has no separate attn.q).
_BLOCK_SOURCES = {"attn.out": ("attn.q", "attn.qkv"), "mlp.out": ("mlp.in",)}


def _shared(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def _matcher(role: str, model):
    try:
        return pattern_matcher(role, model)
    except TargetError:  # unknown family, or a role the family cannot express
        return None


def block_input_path(path: str, model: nn.Module) -> str:
    """The module in the same block as `path` whose input is the sublayer block's input."""
    names = [n for n, _ in named_base_modules(model) if n]
    for role, sources in _BLOCK_SOURCES.items():
        is_role = _matcher(role, model)
        if is_role is None or not is_role(path):
            continue
        for source in sources:
            match = _matcher(source, model)
            hits = [n for n in names if match is not None and match(n)]
            best = max(hits, key=lambda n: _shared(n, path), default=None)  # first of the closest
            if best is not None and _shared(best, path) >= path.count(".") - 1:  # same block
                return best
    raise ValueError("found no sublayer block input for it: parallel adapters and VL-PET gates read the input of the "
                     "block a module closes, which petkit finds for the attn.out and mlp.out roles of known model "
                     "families (bert, gpt2, llama, t5, vit); use a sequential variant here")


class BlockInput:
    """Captures the sublayer block's input with a forward pre-hook on the sibling that reads it.

    The sibling may also run on other inputs in a forward (DeBERTa's query projection reads the
    relative-position embeddings after the tokens): the capture keeps the first call whose tokens
    match the wrapped module's (`taps.Captures`), and a pre-hook on the model forgets what an earlier
    forward left (one that ran with the adapter off). The hooks hold the capture weakly, so a delta
    that is built but never attached (another module failed to build) leaves no live hook behind:
    each removes itself on its next call.
    """

    def __init__(self, path: str, model: nn.Module):
        self.source = block_input_path(path, model)
        module = dict(named_base_modules(model))[self.source]
        self.width = in_out_features(module)[0]
        self.values = Captures()
        ref = weakref.ref(self)

        def capture(_module, args):
            this = ref()
            if this is None:
                handle.remove()
            else:
                this.values.add(args[0])

        def forget(_module, args):
            this = ref()
            if this is None:
                reset.remove()
            else:
                this.values.clear()

        handle = module.register_forward_pre_hook(capture)
        reset = model.register_forward_pre_hook(forget)
        self.handles = (handle, reset)

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """The captured input for the wrapped module's input x (same tokens); each capture is used once."""
        value = self.values.take(x)
        if value is None:
            raise RuntimeError(f"the sublayer block input was not captured from {self.source} in this forward pass "
                               "(is that module run through a fused delta, e.g. LoRA as its only live adapter?)")
        return value

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.values.clear()


# -- the delta ---------------------------------------------------------------------------------------

class BottleneckDelta(Delta):
    """y' = y + s·A(h), h = the output y ("output"), the module's own input x ("input"), or the
    sublayer block's input captured by `block` ("block")."""

    mergeable = False

    def __init__(self, adapter: Bottleneck, scale: float = 1.0, reads: str = "output", block: BlockInput | None = None):
        super().__init__()
        self.adapter, self.scale, self.reads, self.block = adapter, float(scale), reads, block

    def forward(self, base, x, y):
        h = y if self.reads == "output" else x if self.reads == "input" else self.block.take(x)
        return y + self.scale * self.adapter(h)

    def routed(self, base, x, y, rows):
        if self.block is None:
            return super().routed(base, x, y, rows)
        y[rows] = y[rows] + self.scale * self.adapter(self.block.take(x)[rows])

    def release(self):
        if self.block is not None:
            self.block.remove()


# -- config and build --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BottleneckConfig(AdapterConfig):
    """variant: houlsby, pfeiffer, parallel or scaled_parallel (see the module docstring); targets
    default per variant. bottleneck: the size m (overrides reduction_factor, which gives m = d // factor).
    activation: relu, gelu, gelu_new (tanh approximation), silu/swish or tanh. init: zero_up, lora,
    houlsby or bert. scale: s (default 4 for scaled_parallel, else 1)."""

    variant: str = "houlsby"
    reduction_factor: Any = 16
    bottleneck: Any = None
    activation: str = "relu"
    init: str = "zero_up"
    scale: Any = None

    def __post_init__(self):
        super().__post_init__()
        if not self.targets:
            object.__setattr__(self, "targets", VARIANTS[self.variant])

    def validate(self):
        check(self.variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        check(is_number(self.reduction_factor) and 0 < self.reduction_factor < math.inf,
              f"reduction_factor must be a positive number, got {self.reduction_factor!r}")
        check(self.bottleneck is None or is_pos_int(self.bottleneck),
              f"bottleneck must be a positive int (or None to use reduction_factor), got {self.bottleneck!r}")
        check(self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        check(self.init in INITS, f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        check(self.scale is None or (is_number(self.scale) and 0 < self.scale < math.inf),
              f"scale must be a positive number (or None for the variant's default), got {self.scale!r}")

    @property
    def parallel(self) -> bool:
        return self.variant in ("parallel", "scaled_parallel")

    @property
    def effective_scale(self) -> float:
        if self.scale is not None:
            return float(self.scale)
        return 4.0 if self.variant == "scaled_parallel" else 1.0

    def bottleneck_for(self, width: int) -> int:
        if self.bottleneck is not None:
            return self.bottleneck
        m = int(width // self.reduction_factor)
        if m < 1:
            raise ValueError(f"reduction_factor {self.reduction_factor} leaves no bottleneck for width {width}; "
                             "use a smaller factor or set bottleneck")
        return m


def build_bottleneck(base, config: BottleneckConfig, path: str, model, init: bool = True) -> BottleneckDelta:
    d_out = in_out_features(base)[1]
    m = config.bottleneck_for(d_out)  # checked before a hook is registered
    block = BlockInput(path, model) if config.parallel else None
    adapter = Bottleneck(block.width if block else d_out, m, d_out, config.activation)
    if init:
        adapter.reset(config.init)
    return BottleneckDelta(adapter, config.effective_scale, "block" if block else "output", block)


register(Method(
    name="bottleneck", config=BottleneckConfig, kind="output", build=build_bottleneck, layer_types=LINEAR_TYPES,
    mergeable=False, spec="Houlsby et al. 2019 (arXiv 1902.00751); Pfeiffer et al. 2021 (arXiv 2005.00247); "
                          "He et al. 2022 (arXiv 2110.04366)",
    summary="bottleneck adapters: Houlsby, Pfeiffer, parallel and scaled parallel",
    default_targets=("attn.out", "mlp.out"),
    # bench: MiniLM is 384 wide with 6 layers
    bench=MethodDefaults({"variant": "houlsby", "bottleneck": 32}, (1e-3, 5e-3), "adapter"),
))
