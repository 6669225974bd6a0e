"""Low-bit adapters (Jie, Wang, Deng, ICCV 2023, "Revisiting the Parameter Efficiency of Adapters from
the Perspective of Precision Redundancy", arXiv 2307.16867): Bi-LoRA and Bi-AdaptFormer at 1/2/4/8 bits.

Both adapters are two bias-free projections, Down (r × in) and Up (out × r), trained with
quantisation-aware training: every forward uses Q(W) (see `petkit/kernels/quantize.py`: per-tensor standardisation,
a Gaussian codebook, straight-through gradient) while the optimiser updates fp32 latent weights.
  lowbit-lora     y = W x + b + s · Q(Up) Dropout(Q(Down) x)               a weight delta, mergeable:
                  ΔW = s · Q(Up) Q(Down). Paper placement: attention q and v (the default
                  targets; the fused qkv layer on models that fuse them).
  lowbit-adapter  y = W x + b + s · Q(Up) Dropout(ReLU(Q(Down) h))         nonlinear: not mergeable;
                  h = the input of the block the wrapped layer closes (see below).
bits = 32 gives the full-precision twin of either (no quantisation). Trainable: r · (in + out) per
module. Init (as the official code): Down kaiming-uniform; Up = 0 at 32 bits (exact identity) but
trunc-normal(0, 0.001, ±0.002) when quantised, because an all-zero tensor has no spread to
standardise; so quantised adapters start *near*, not at, the base model.

On disk the adapter holds packed codes + [μ, s] per projection (`saved_tensors`), not float weights:
ceil(r·in·bits/8) + ceil(out·r·bits/8) + 16 bytes per module. Loading dequantises into the latent
weights and pins them: until they change (an optimiser step), forward uses them as they are, which
reproduces the saved adapter exactly (the official code's `fake_quan = False` after loading).
`quantize_adapter` converts a trained LoRA or full-precision adapter after training (PTQ).

Paper vs code: the codebook defaults to the paper's error-minimising (Lloyd–Max) levels;
`codebook="median"` gives the official code's cell medians (spec §4). Bi-AdaptFormer runs parallel to
the MLP block: wrapping the MLP output projection (mlp.out; attn.out puts it parallel to attention),
it reads the block's input, captured from mlp.in by `adapters.BlockInput`, and adds to the
projection's output. That input is the residual stream itself in post-LN models (BERT) but LN2(x) in
pre-LN ones, where the official code feeds the un-normalised x (no engine hook exposes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.config import AdapterConfig, check, is_number, is_pos_int
from petkit.core.errors import ConfigError
from petkit.core.head import HeadDelta
from petkit.core.layer import Delta, add_to_weight, in_out_features
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, MethodDefaults, register
from petkit.kernels import quantize as qz
from petkit.methods.adapters import BlockInput

FULL = 32  # bits value meaning "no quantisation"
ALLOWED_BITS = qz.BITS + (FULL,)


@dataclass(frozen=True)
class LowbitLoraConfig(AdapterConfig):
    """bits: 1, 2, 4, 8 or 32 (full precision); codebook: "lloyd-max" (paper) or "median" (official
    code); r: bottleneck width; scale: s; dropout: on the r-dim hidden state (0.1 in the paper)."""

    bits: int = 1
    codebook: str = "lloyd-max"
    r: int = 32
    scale: float = 1.0
    dropout: float = 0.1

    def validate(self):
        check(type(self.bits) is int and self.bits in ALLOWED_BITS,
              f"bits must be one of {', '.join(map(str, ALLOWED_BITS))} (32 = full precision), got {self.bits!r}")
        check(self.codebook in qz.CODEBOOKS, f"codebook must be one of {', '.join(qz.CODEBOOKS)}, got {self.codebook!r}")
        check(is_pos_int(self.r), f"r must be a positive int, got {self.r!r}")
        check(is_number(self.scale) and 0 < self.scale < math.inf, f"scale must be a positive number, got {self.scale!r}")
        check(is_number(self.dropout) and 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")


@dataclass(frozen=True)
class LowbitAdapterConfig(LowbitLoraConfig):
    """The bottleneck (AdaptFormer-style) adapter: same fields, ReLU between the projections, s = 0.1."""

    scale: float = 0.1


class QuantWeight(nn.Module):
    """A trainable fp latent weight and the low-bit weight the forward uses (bits = 32: the weight)."""

    def __init__(self, shape: tuple[int, int], bits: int, codebook: str):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))
        self.bits = bits
        self._pin = None  # weight._version right after a load: the loaded weight is used as is
        if bits != FULL:
            levels, thresholds = qz.gaussian_codebook(bits, codebook)
            self.register_buffer("levels", levels.float(), persistent=False)
            self.register_buffer("thresholds", thresholds.float(), persistent=False)
            # What the adapter file holds, refreshed from the latent weight by `saved()`.
            self.register_buffer("codes", torch.zeros(qz.packed_size(self.weight.numel(), bits), dtype=torch.uint8),
                                 persistent=False)
            self.register_buffer("stats", torch.zeros(2), persistent=False)

    @property
    def pinned(self) -> bool:
        return self._pin is not None and self._pin == self.weight._version

    def forward(self) -> torch.Tensor:
        w = self.weight
        if self.bits == FULL or self.pinned:
            return w
        return qz.fake_quantize(w, self.levels.to(w.dtype), self.thresholds.to(w.dtype))

    def saved(self) -> dict[str, torch.Tensor]:
        if self.bits == FULL:
            return {"weight": self.weight}
        if not self.pinned:  # a pinned weight still equals the loaded codes
            codes, stats = qz.quantize(self.weight, self.thresholds.to(self.weight.dtype))
            self.codes.copy_(qz.pack(codes, self.bits))
            self.stats.copy_(stats)
        return {"codes": self.codes, "stats": self.stats}

    @torch.no_grad()
    def loaded(self) -> None:
        if self.bits == FULL:
            return
        codes = qz.unpack(self.codes, self.bits, self.weight.numel())
        self.weight.copy_(qz.dequantize(codes, self.stats, self.levels).view_as(self.weight))
        self._pin = self.weight._version


class LowbitDelta(Delta):
    """block: None for the LoRA form (the branch reads the layer's input x), else the capture of the
    block input the nonlinear adapter reads."""

    def __init__(self, base: nn.Module, config: LowbitLoraConfig, block: BlockInput | None, init: bool):
        super().__init__()
        in_f, out_f = in_out_features(base)
        self.block, self.nonlinear = block, block is not None
        self.mergeable = not self.nonlinear
        self.down = QuantWeight((config.r, block.width if block else in_f), config.bits, config.codebook)
        self.up = QuantWeight((out_f, config.r), config.bits, config.codebook)
        self.scale, self.p = float(config.scale), float(config.dropout)
        if init:
            with torch.no_grad():
                nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # nn.Linear's default
                if config.bits != FULL:
                    nn.init.trunc_normal_(self.up.weight, mean=0.0, std=0.001, a=-0.002, b=0.002)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        down = self.down()
        h = F.linear(x.to(down.dtype), down)
        if self.nonlinear:
            h = F.relu(h)
        if self.p:
            h = F.dropout(h, self.p, self.training)
        return F.linear(h, self.up()) * self.scale

    def forward(self, base, x, y):
        h = x if self.block is None else self.block.take(x)
        return y + self.branch(h).to(y.dtype)

    def routed(self, base, x, y, rows):
        if self.block is None:
            return super().routed(base, x, y, rows)
        y[rows] = y[rows] + self.branch(self.block.take(x)[rows]).to(y.dtype)  # captured for the whole batch

    def delta_weight(self, base):
        return None if self.nonlinear else self.scale * (self.up() @ self.down())

    def merge(self, base):
        add_to_weight(base, self.delta_weight(base).detach())

    def unmerge(self, base):
        add_to_weight(base, self.delta_weight(base).detach(), sign=-1.0)

    def saved_tensors(self):
        return {f"{part}.{k}": v for part in ("down", "up") for k, v in getattr(self, part).saved().items()}

    def loaded(self):
        self.down.loaded()
        self.up.loaded()

    def release(self):
        if self.block is not None:
            self.block.remove()


def build_lowbit_lora(base, config, path, model, init=True):
    return LowbitDelta(base, config, None, init)


def build_lowbit_adapter(base, config, path, model, init=True):
    return LowbitDelta(base, config, BlockInput(path, model), init)


SPEC = "Jie, Wang, Deng, ICCV 2023 (arXiv 2307.16867)"
register(Method(
    name="lowbit-lora", config=LowbitLoraConfig, kind="weight", build=build_lowbit_lora,
    layer_types=LINEAR_TYPES, mergeable=True, spec=SPEC, default_targets=("attn.q", "attn.v"),
    summary="Bi-LoRA: low-rank delta quantised to 1/2/4/8 bits in training, packed on disk",
    bench=MethodDefaults({"bits": 1, "r": 8, "scale": 1.0, "targets": ["attn.q", "attn.v"]}, (1e-3, 5e-3), "low-bit"),
))
register(Method(
    name="lowbit-adapter", config=LowbitAdapterConfig, kind="output", build=build_lowbit_adapter,
    layer_types=LINEAR_TYPES, mergeable=False, spec=SPEC, default_targets=("mlp.out",),
    summary="Bi-AdaptFormer: ReLU bottleneck quantised to 1/2/4/8 bits in training, packed on disk",
    bench=MethodDefaults({"bits": 1, "r": 8, "scale": 0.1}, (3e-3, 1e-2), "low-bit"),
))


# -- post-training quantisation -------------------------------------------------------------------

@dataclass
class QuantizationReport:
    """errors: per module, ||X_q − X|| / ||X|| (Frobenius) where X is ΔW for weight deltas and the
    stacked [Down, Up] weights for the nonlinear adapter; error: the same over all modules together.
    output_error (when a batch was given): ||y_q − y|| / ||y − y_base||, the share of the adapter's
    effect on the model output that quantisation lost. Bytes count the method's tensors, not the head."""

    name: str
    bits: int
    errors: dict[str, float] = field(default_factory=dict)
    error: float = 0.0
    stored_bytes: int = 0
    float_bytes: int = 0
    output_error: float | None = None


@torch.no_grad()
def quantize_adapter(am, name: str, bits: int, *, codebook: str = "lloyd-max", new_name: str | None = None,
                     batch: dict | None = None) -> QuantizationReport:
    """Add `new_name` (default "<name>-<bits>bit"): adapter `name` quantised to `bits` after training.

    `name` may be a LoRA adapter (one rank for all modules, linear layers, not PiSSA; per-module
    alpha is folded into Up) or a lowbit-lora / lowbit-adapter (its effective weights are re-quantised).
    The new adapter is added frozen, with a copy of the source's task head; the active set is unchanged.
    """
    src_cfg = am.adapter_config(name)
    method = am.method_of(name).name
    new_name = new_name or f"{name}-{bits}bit"
    if method == "lora":
        check(not src_cfg.rank_pattern, "quantize_adapter needs one rank for all modules; this LoRA has a rank_pattern")
        check(src_cfg.init != "pissa", "quantize_adapter cannot convert a PiSSA adapter (ΔW = s(BA − B0A0) is not "
                                       "one product); merge it instead")
        scale = src_cfg.alpha / (math.sqrt(src_cfg.r) if src_cfg.rslora else src_cfg.r)
        paths = [p for p, _, d in am.layers(name) if not isinstance(d, HeadDelta)]
        cfg = LowbitLoraConfig(targets=paths, train_head=src_cfg.train_head, bits=bits, codebook=codebook,
                               r=src_cfg.r, scale=scale, dropout=src_cfg.dropout)
    elif method in ("lowbit-lora", "lowbit-adapter"):
        cfg = src_cfg.replace(bits=bits, codebook=codebook)
    else:
        raise ConfigError(f"quantize_adapter converts lora, lowbit-lora and lowbit-adapter adapters, not {method}")
    am.add(cfg, new_name, trainable=False, init=False)

    report = QuantizationReport(new_name, bits)
    num = den = 0.0
    for path, layer, new in am.layers(new_name):
        old = layer.deltas[name]
        if isinstance(new, HeadDelta):
            new.module.load_state_dict(old.module.state_dict())
            continue
        if method == "lora":  # fold this module's own scale (alpha_pattern) into Up
            down, up = old.A, old.B * (old.scale / new.scale)
        else:
            down, up = old.down(), old.up()
        new.down.weight.copy_(down)
        new.up.weight.copy_(up)
        if new.nonlinear:
            ref = torch.cat([down.flatten(), up.flatten()])
            got = torch.cat([new.down().flatten(), new.up().flatten()])
        else:
            ref, got = old.delta_weight(layer.base_layer), new.delta_weight(layer.base_layer)
        err, size = (got - ref).norm().item() ** 2, ref.norm().item() ** 2
        report.errors[path] = math.sqrt(err / size) if size else 0.0
        num, den = num + err, den + size
        report.stored_bytes += sum(t.numel() * t.element_size() for t in new.saved_tensors().values())
        report.float_bytes += 4 * sum(p.numel() for p in new.parameters())
    report.error = math.sqrt(num / den) if den else 0.0
    if batch is not None:
        report.output_error = _output_error(am, name, new_name, batch)
    return report


def _output_error(am, name: str, new_name: str, batch: dict) -> float:
    def run():
        out = am(**batch)
        return getattr(out, "logits", out).float()

    active, training = am.active, am.training
    am.eval()  # dropout off: the three outputs must differ by the weights only
    try:
        with am.disabled():
            y_base = run()
        am.set_active(name)
        y_fp = run()
        am.set_active(new_name)
        y_q = run()
    finally:
        am.set_active(active)
        am.train(training)
    effect = (y_fp - y_base).norm().item()
    return (y_q - y_fp).norm().item() / effect if effect else 0.0
