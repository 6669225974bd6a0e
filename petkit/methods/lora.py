"""LoRA (Hu et al. 2021) with rsLoRA scaling, PiSSA init and per-module rank patterns; DoRA (Liu et al. 2024).

ΔW = s · B A with A ∈ R^{r×in}, B ∈ R^{out×r}, s = alpha / r (rsLoRA: alpha / sqrt(r)).
B starts at zero, so the adapted model equals the base at init. Works on Linear, GPT-2 Conv1D,
Embedding and Conv2d; the linear forward is the fused kernel in `petkit/kernels/lora.py`.

PiSSA (Meng et al. 2024) starts A, B from the top-r singular triplets of W. Instead of rewriting the
base weight to the residual (as the paper and PEFT do), petkit keeps the initial factors A0, B0 as
buffers and uses ΔW = s (B A − B0 A0): the same function and gradients, the base stays untouched,
and the file is a plain rank-2r LoRA of the original base when exported to PEFT.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.config import AdapterConfig, check, is_number, is_pos_int
from petkit.core.errors import AdapterFileError, ConfigError
from petkit.core.layer import Delta, add_to_weight, in_out_features, weight_oi
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, MethodDefaults, register
from petkit.core.roles import lora_default_targets
from petkit.core.storage import WEIGHTS_NAME
from petkit.core.targeting import matches_any
from petkit.interop.peft_common import short
from petkit.interop.peft_tuner import TunerFormat, fan_in_fan_out, literal, peft_pattern
from petkit.kernels.lora import lora_linear, lora_linear_grouped, lora_linear_routed

INITS = ("kaiming", "gaussian", "pissa")


@dataclass(frozen=True)
class LoraConfig(AdapterConfig):
    """r: rank; alpha: scale numerator; dropout on the adapter input; rslora: s = alpha/sqrt(r);
    init: "kaiming" (PEFT's default), "gaussian" (A ~ N(0, 1/r)) or "pissa";
    rank_pattern / alpha_pattern: {target pattern: value} overriding r / alpha per module."""

    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    rslora: bool = False
    init: str = "kaiming"
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)

    def validate(self):
        check(is_pos_int(self.r), f"r must be a positive int, got {self.r!r}")
        check(is_number(self.alpha) and 0 < self.alpha < math.inf, f"alpha must be a positive number, got {self.alpha!r}")
        check(is_number(self.dropout) and 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")
        check(isinstance(self.rslora, bool), f"rslora must be true or false, got {self.rslora!r}")
        check(self.init in INITS, f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        for name, table, ok in (("rank_pattern", self.rank_pattern, is_pos_int),
                                ("alpha_pattern", self.alpha_pattern, lambda v: is_number(v) and 0 < v < math.inf)):
            check(isinstance(table, dict), f"{name} must map target patterns to values, got {type(table).__name__}")
            for key, value in table.items():
                check(isinstance(key, str) and ok(value), f"{name}[{key!r}] must be a positive number, got {value!r}")

    def rank_and_scale(self, path: str, model) -> tuple[int, float]:
        key = matches_any(path, self.rank_pattern, model)
        r = self.rank_pattern[key] if key else self.r
        key = matches_any(path, self.alpha_pattern, model)
        alpha = self.alpha_pattern[key] if key else self.alpha
        return r, alpha / (math.sqrt(r) if self.rslora else r)


class LoraDelta(Delta):
    fused = True

    def __init__(self, base: nn.Module, r: int, scale: float, dropout: float, init: str | None):
        super().__init__()
        self.r, self.scale, self.p = r, float(scale), float(dropout)
        in_f, out_f = in_out_features(base)
        if isinstance(base, nn.Conv2d):
            if base.groups != 1 or base.padding_mode != "zeros":
                raise ValueError("LoRA on Conv2d supports groups=1 and zero padding only")
            self.A = nn.Parameter(torch.empty(r, base.in_channels, *base.kernel_size))
            self.B = nn.Parameter(torch.empty(out_f, r, 1, 1))
        else:
            self.A = nn.Parameter(torch.empty(r, in_f))
            self.B = nn.Parameter(torch.empty(out_f, r))
        self.is_linear = isinstance(base, LINEAR_TYPES)
        self.pissa = False
        if init is not None:
            self.reset(base, init)

    @torch.no_grad()
    def reset(self, base: nn.Module, init: str) -> None:
        if init == "pissa":
            self._pissa_init(base)
        elif isinstance(base, nn.Embedding):  # PEFT's convention for embeddings: A = 0, B ~ N(0, 1)
            nn.init.zeros_(self.A)
            nn.init.normal_(self.B)
        else:
            if init == "gaussian":
                nn.init.normal_(self.A, std=1.0 / self.r)
            else:
                nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
            nn.init.zeros_(self.B)

    def _pissa_init(self, base: nn.Module) -> None:
        if not self.is_linear:
            raise ValueError("PiSSA init applies to linear layers only")
        W = weight_oi(base).detach().float()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        root = (S[: self.r] / self.scale).sqrt()
        self.A.copy_(root[:, None] * Vh[: self.r])
        self.B.copy_(U[:, : self.r] * root[None, :])
        self.enable_pissa()

    def enable_pissa(self) -> None:
        """Register A0, B0 (frozen copies of the initial factors): ΔW = s (B A − B0 A0)."""
        self.pissa = True
        self.register_buffer("A0", self.A.detach().clone())
        self.register_buffer("B0", self.B.detach().clone())

    # -- forward ------------------------------------------------------------------------------
    def _effective_weight(self, base):
        W = weight_oi(base)
        return torch.addmm(W, self.B0, self.A0, alpha=-self.scale) if self.pissa else W

    def fused_forward(self, base, x):
        if not self.is_linear:
            return self(base, x, base(x))
        p = self.p if self.training else 0.0
        return lora_linear(x, self._effective_weight(base), base.bias, self.A, self.B, self.scale, p)

    def _low_rank(self, base, x):
        """s · B A drop(x) for this layer type (no base term); dropout only when training.

        PiSSA's −s · B0 A0 x takes the whole input, not the dropped one: it stands for the residual
        base weight W − s · B0 A0 of the paper and PEFT, and a base weight sees no dropout."""
        if isinstance(base, nn.Embedding):
            u = F.embedding(x, self.A.t(), base.padding_idx, base.max_norm, base.norm_type,
                            base.scale_grad_by_freq, base.sparse)
            return (u @ self.B.t()) * self.scale
        dropped = F.dropout(x, self.p, self.training) if self.p else x
        if isinstance(base, nn.Conv2d):
            u = F.conv2d(dropped, self.A, None, base.stride, base.padding, base.dilation)
            return F.conv2d(u, self.B) * self.scale
        out = self._product(dropped, self.A, self.B)
        if self.pissa:
            out = out - self._product(x, self.A0, self.B0)
        return out

    def _product(self, x, A, B):
        """s · B A x on a linear layer."""
        return F.linear(F.linear(x, A), B) * self.scale

    def forward(self, base, x, y):
        return y + self._low_rank(base, x)

    def routed(self, base, x, y, rows):
        if isinstance(rows, slice):
            y[rows] += self._low_rank(base, x[rows])
        else:
            y.index_add_(0, rows, self._low_rank(base, x.index_select(0, rows)).to(y.dtype))

    @staticmethod
    def routed_plan(base, x, groups):
        """Every LoRA group of a mixed batch on this layer as one batched computation (`RoutedLora`):
        two bmm's for all samples instead of a gather, two GEMMs and a scatter per adapter. `groups` is [(delta, rows)]. Returns (x -> y, the tensors it read), or None
        when the batched form does not apply (non-linear layer, PiSSA, dropout while training, unequal
        dtypes, another delta type) and the caller falls back to `routed` per group.

        The ops building it are differentiable, so under autograd each adapter gets its gradients;
        without autograd the layer keeps the plan for the next steps of the same routing
        (`AdaptedLayer._routed_plan`)."""
        first = groups[0][0]
        if not first.is_linear or x.dim() < 2:
            return None
        W = weight_oi(base)
        for d, _ in groups:
            if (not isinstance(d, LoraDelta) or type(d).routed is not LoraDelta.routed or d.pissa
                    or (d.p and d.training) or d.A.dtype != x.dtype or d.B.dtype != x.dtype or W.dtype != x.dtype):
                return None
        read = [t for d, _ in groups for t in (d.A, d.B)] + ([base.bias] if base.bias is not None else [])
        return RoutedLora(base, groups, x.shape[0], x.device), read

    # -- merging ------------------------------------------------------------------------------
    def delta_weight(self, base):
        dw = self.B.flatten(1) @ self.A.flatten(1)
        if self.pissa:
            dw = dw - self.B0 @ self.A0
        return dw * self.scale

    def merge(self, base):
        add_to_weight(base, self.delta_weight(base).detach())

    def unmerge(self, base):
        add_to_weight(base, self.delta_weight(base).detach(), sign=-1.0)


class RoutedLora:
    """One routing's LoRA factors on one linear layer: a bank with each group's s·A and B^T once (slot 0:
    zeros, for samples without an adapter here; lower ranks zero-padded to the largest), laid out per
    call for whichever kernel reads less: `lora_linear_grouped` (each adapter's factors once, plus a
    gather of x and of the output) for a few tokens per sample, `lora_linear_routed` (every sample's
    own factors) for longer sequences."""

    def __init__(self, base, groups, n, device):
        # Built again whenever the routing changes (a sequence joins or leaves): few ops per adapter.
        W = weight_oi(base)
        r = max(d.r for d, _ in groups)
        slot = [0] * n
        As, Bs, scales = [W.new_zeros(r, W.shape[1])], [W.new_zeros(W.shape[0], r)], [0.0]
        for g, (d, rows) in enumerate(groups, 1):
            for i in (range(n)[rows] if isinstance(rows, slice) else rows.tolist()):
                slot[i] = g
            As.append(d.A if d.r == r else F.pad(d.A, (0, 0, 0, r - d.r)))
            Bs.append(d.B if d.r == r else F.pad(d.B, (0, r - d.r)))
            scales.append(d.scale)
        self.base, self.Bt = base, torch.stack(Bs).transpose(1, 2)
        self.A = torch.stack(As) * torch.tensor(scales, dtype=W.dtype, device=W.device).view(-1, 1, 1)
        self.slot = torch.tensor(slot, device=device)
        members: dict[int, list[int]] = {}
        for i, g in enumerate(slot):
            members.setdefault(g, []).append(i)
        used = sorted(members)
        m = max(map(len, members.values()))
        src = [i for g in used for i in members[g] + members[g][:1] * (m - len(members[g]))]
        back = [0] * n
        for k, g in enumerate(used):
            for j, i in enumerate(members[g]):
                back[i] = k * m + j
        self.places = [torch.tensor(t, device=device) for t in (used, src, back)]
        self.spare = (n - len(used)) * r  # factor rows the per-sample layout reads beyond the grouped one
        self.grouped = self.per_sample = None  # each layout is built on first use (a prefill, then decoding)

    def __call__(self, x):
        base, n = self.base, x.shape[0]
        if n * (x[0].numel() // x.shape[-1]) < self.spare:  # fewer tokens to gather than factor rows to spare
            if self.grouped is None:
                used, src, back = self.places
                self.grouped = (self.A.index_select(0, used), self.Bt.index_select(0, used).contiguous(), src, back)
            return lora_linear_grouped(x, weight_oi(base), base.bias, *self.grouped)
        if self.per_sample is None:
            Bt = self.Bt.index_select(0, self.slot)
            if base.bias is not None:  # folded in as an extra rank-1 term (see lora_linear_routed)
                Bt = torch.cat([Bt, base.bias.view(1, 1, -1).expand(n, 1, -1)], 1)
            self.per_sample = (self.A.index_select(0, self.slot), Bt.contiguous())
        return lora_linear_routed(x, weight_oi(base), *self.per_sample)


def build_lora(base, config: LoraConfig, path: str, model, init: bool = True) -> LoraDelta:
    r, scale = config.rank_and_scale(path, model)
    delta = LoraDelta(base, r, scale, config.dropout, config.init if init else None)
    if not init and config.init == "pissa":
        delta.enable_pissa()  # buffers exist so the saved A0, B0 can be loaded into them
    return delta


# -- DoRA ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DoraConfig(LoraConfig):
    """DoRA: W' = m · (W + s B A) / ||W + s B A||_row, with the norm treated as a constant in backward
    (paper §4.3). Same fields as LoraConfig; linear layers only."""

    def validate(self):
        super().validate()
        check(self.init != "pissa", "DoRA does not combine with PiSSA init in petkit; use init='kaiming' or 'gaussian'")


class DoraDelta(LoraDelta):
    fused = False

    def __init__(self, base, r, scale, dropout, init):
        super().__init__(base, r, scale, dropout, init)
        if init is None:  # loading: the saved magnitude overwrites it, so skip the norm computation
            self.magnitude = nn.Parameter(torch.empty(in_out_features(base)[1]))
        else:
            self.magnitude = nn.Parameter(self._column_norm(base).detach().clone())

    def _merged_weight(self, base):
        weight = weight_oi(base)  # while building, A and B are still in float32 (see core/dtypes.py)
        return torch.addmm(weight, self.B.to(weight.dtype), self.A.to(weight.dtype), alpha=self.scale)

    def _column_norm(self, base):
        # Norm of each output row of W + sBA (PEFT and the paper call it the column norm of W^T).
        return self._merged_weight(base).norm(dim=1)

    def forward(self, base, x, y):
        """y + (m/n − 1) · W x + (m/n) · s · B A x, PEFT's form. With dropout in training both terms
        take the dropped input while y keeps the whole one (the paper does not say). Without dropout
        W x is read off y less the bias, as in PEFT, which makes this (m/n)(y − b + s B A x) + b."""
        factor = self.magnitude / self._column_norm(base).detach()
        if self.p and self.training:
            x = F.dropout(x, self.p, True)
            y_lin = F.linear(x, weight_oi(base))
        else:
            y_lin = y if base.bias is None else y - base.bias
        return y + (factor - 1) * y_lin + factor * self._product(x, self.A, self.B)

    routed = Delta.routed  # DoRA rescales the whole output, so LoRA's additive routing does not apply

    def delta_weight(self, base):
        factor = (self.magnitude / self._column_norm(base))[:, None]
        return factor * self._merged_weight(base) - weight_oi(base)

    @torch.no_grad()
    def merge(self, base):
        factor = self.magnitude / self._column_norm(base)
        self._merge_factor = factor.clone()
        W = weight_oi(base)
        W.copy_(factor[:, None] * self._merged_weight(base))

    @torch.no_grad()
    def unmerge(self, base):
        W = weight_oi(base)
        W.div_(self._merge_factor[:, None]).addmm_(self.B, self.A, alpha=-self.scale)
        del self._merge_factor


def build_dora(base, config: DoraConfig, path: str, model, init: bool = True) -> DoraDelta:
    r, scale = config.rank_and_scale(path, model)
    return DoraDelta(base, r, scale, config.dropout, config.init if init else None)


# -- Hugging Face PEFT's format: LORA (DoRA is use_dora) ---------------------------------------------

_PEFT_NAMES = (("lora_A.weight", "A"), ("lora_B.weight", "B"), ("lora_embedding_A", "A"), ("lora_embedding_B", "B"),
               ("lora_magnitude_vector", "magnitude"))
# Inits that leave the base weights alone. PEFT rewrites the base for the others, so such a file only
# fits that rewritten base; "pissa" is deterministic and petkit redoes it (as PEFT does on loading).
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")


def _rank(delta: LoraDelta) -> int:
    return 2 * delta.r if delta.pissa else delta.r  # PiSSA is written as a rank-2r LoRA (_peft_tensors)


def _peft_tensors(delta: LoraDelta, layer, path: str) -> dict:
    A, B = delta.A.detach(), delta.B.detach()
    if delta.pissa:  # ΔW = s(BA − B0A0) is exactly a rank-2r LoRA [B, −B0][A; A0] with the same s
        A, B = torch.cat([A, delta.A0]), torch.cat([B, -delta.B0], dim=1)
    if isinstance(layer.base_layer, nn.Embedding):
        out = {"lora_embedding_A": A, "lora_embedding_B": B}
    else:
        out = {"lora_A.weight": A, "lora_B.weight": B}
    if isinstance(delta, DoraDelta):
        out["lora_magnitude_vector"] = delta.magnitude.detach()
    return out


def _peft_config(config: LoraConfig, layers, common: dict) -> dict:
    ranks = {path: _rank(d) for path, _, d in layers}
    alphas = {path: d.scale * (math.sqrt(ranks[path]) if config.rslora else ranks[path]) for path, _, d in layers}
    r0 = max(set(ranks.values()), key=list(ranks.values()).count) if ranks else config.r
    a0 = max(set(alphas.values()), key=list(alphas.values()).count) if alphas else config.alpha
    return {**common, "peft_type": "LORA", "fan_in_fan_out": fan_in_fan_out(layers), "r": r0, "lora_alpha": a0,
            "lora_dropout": config.dropout, "use_rslora": config.rslora, "use_dora": isinstance(config, DoraConfig),
            "init_lora_weights": True, "bias": "none",
            "rank_pattern": {_anchored(p): v for p, v in ranks.items() if v != r0},
            "alpha_pattern": {_anchored(p): v for p, v in alphas.items() if v != a0}}


def _anchored(path: str) -> str:
    # PEFT matches pattern keys with re.match(rf"(.*\.)?({key})$", name): an anchored full path.
    return "^" + re.escape(path)


def _peft_init(config: dict, file) -> bool:
    """Whether adding the adapter runs its init: PiSSA recomputes its initial factors from the base."""
    init = config.get("init_lora_weights", True)
    if init not in _PLAIN_INITS + ("pissa",):
        raise AdapterFileError(f"this PEFT adapter was initialised with init_lora_weights={short(init)}, which rewrites the "
                               "base weights; save it in PEFT with path_initial_model_for_weight_conversion to get a plain LoRA")
    return init == "pissa"


def _from_peft(config: dict, adapter: dict, train_head, file) -> LoraConfig:
    weights = file.parent / WEIGHTS_NAME
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    if not isinstance(ranks, dict) or not isinstance(alphas, dict):
        raise ConfigError("rank_pattern and alpha_pattern must be JSON objects")
    r0, a0 = config.get("r", 8), config.get("lora_alpha", 8)
    rank_pattern, alpha_pattern = {}, {}
    for path, theirs in adapter.items():
        r = peft_pattern(ranks, path, r0, file)
        alpha = peft_pattern(alphas, path, a0, file)
        # The rank in the tensors must be the config's: checked before anything of that size is allocated.
        dims = {t.shape[0] for k, t in theirs.items() if k in ("lora_A.weight", "lora_embedding_A") and t.ndim}
        dims |= {t.shape[1] for k, t in theirs.items() if k in ("lora_B.weight", "lora_embedding_B") and t.ndim > 1}
        if not dims:
            raise AdapterFileError(f"{weights}: {path!r} has no lora_A/lora_B tensors")
        if not (isinstance(r, int) and dims == {r}):
            raise AdapterFileError(f"{weights}: the tensors of {path!r} have rank "
                                   f"{', '.join(map(str, sorted(dims)))}, the config says r={short(r)}")
        if r != r0:
            rank_pattern[literal(path)] = r
        if alpha != a0:
            alpha_pattern[literal(path)] = alpha
    cls = DoraConfig if config.get("use_dora") else LoraConfig
    return cls(targets=[literal(p) for p in adapter], r=r0, alpha=a0, dropout=config.get("lora_dropout", 0.0) or 0.0,
               rslora=bool(config.get("use_rslora", False)), init="pissa" if config.get("init_lora_weights") == "pissa" else "kaiming",
               rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, train_head=train_head)


def _to_delta(delta: LoraDelta, theirs: dict) -> dict:
    return {dst: theirs[src] for src, dst in _PEFT_NAMES if src in theirs}


PEFT = TunerFormat(
    "LORA", leaves=tuple(src for src, _ in _PEFT_NAMES), export_layer=_peft_tensors, export_config=_peft_config,
    import_config=_from_peft, import_layer=_to_delta, load_init=_peft_init, recomputed=("A0", "B0"),
    twin=("LoraConfig", ("target_modules", "r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora", "rank_pattern",
                         "alpha_pattern")))


# -- registration ----------------------------------------------------------------------------------

register(Method(
    name="lora", config=LoraConfig, kind="weight", build=build_lora,
    layer_types=LINEAR_TYPES + (nn.Embedding, nn.Conv2d), mergeable=True,
    spec="Hu et al. 2021 (arXiv 2106.09685); rsLoRA arXiv 2312.03732; PiSSA arXiv 2404.02948",
    summary="low-rank weight update s·BA; rsLoRA, PiSSA init, rank patterns",
    default_targets=lora_default_targets, peft=PEFT,
    bench=MethodDefaults({"r": 8, "alpha": 16, "targets": ["attn.q", "attn.v"]}, (1e-3, 5e-3), "low-rank"),
))


register(Method(
    name="dora", config=DoraConfig, kind="weight", build=build_dora,
    layer_types=LINEAR_TYPES, mergeable=True,
    spec="Liu et al. 2024, DoRA (arXiv 2402.09353)",
    summary="LoRA direction + trained per-row magnitude",
    default_targets=lora_default_targets, peft=PEFT,
    bench=MethodDefaults({"r": 8, "alpha": 16, "targets": ["attn.q", "attn.v"]}, (1e-3, 5e-3), "low-rank"),
))
