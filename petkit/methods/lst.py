"""Ladder side-tuning (LST; Sung, Cho & Bansal, NeurIPS 2022, arXiv 2206.06522).

A side network — the backbone's own architecture with every width divided by r (hidden d/r, head
dim d_h/r, FFN d_ff/r, same number of heads) — runs beside the frozen backbone and reads it only
through ladders, so no gradient ever enters the backbone and none of its activations are kept:

    h_S = Down_0(E(x))                                   E(x): the backbone's embedding output
    for each backbone layer i with a side layer:         (all layers by default; `side_layers`)
        μ_i = σ(α_i / T)                                 α_i = 0 at init, T = 0.1: μ = 0.5
        h_S = SideLayer_i(μ_i · h_S + (1 − μ_i) · Down_i(h_B,i))
    output = Up(SideNorm(h_S))                           replaces the backbone's last hidden state

and the model's own head reads the output (BERT: the frozen pooler, then the task head; causal
LMs: the frozen LM head). Down_i: d → d/r, Up: d/r → d (with bias, fresh N(0, 0.02)).

Init (`init="l1"`: the official code's structured pruning with |W| as importance; the code's
default importance, Fisher, needs data: `init_from_fisher(am, batches)` after adapt(); `random`:
the side network's own fresh init): the kept hidden indices are the top d/r of the word-embedding importance, shared by
every layer (the residual stream); per layer, the kept head dims are the top d_h/r of the q·k·v
importance product (one set for every head, so heads stay aligned), the kept FFN units the top
d_ff/r of the product over the FFN input projections; norms and biases are sliced to match. The
official code picks per-head sets and lets the output projection rows float; a shared head set
and the residual indices are the smallest change that keeps a side network with residuals and
grouped-query attention consistent.

Families: any text model with one stack of layers (encoders and decoder-only models), found from
its structure: the side network is the backbone's own class at 1/r width, called on the same
positions and mask, its first layer reading Down_0(E(x)) in place of its own embedding output;
that embedding stage (and every other embedding table of the side, such as DeBERTa's relative
positions) stays frozen at its init. Decoders generate with a KV cache (the side network keeps its
own). Refused clearly: encoder-decoders (two stacks), shared layers (ALBERT), vision models (HST),
and the l1 init on models whose q, k and v are one layer or whose FFN is no Linear pair (use
init="random"). Trainable: the side layers and its other norms, Down_0, every Down_i, α, Up (+ the
task head). Not mergeable.
"""

from __future__ import annotations

import copy
import inspect
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.blocks import linear_io
from petkit.core.config import AdapterConfig, check, is_number, is_pos_int
from petkit.core.errors import ConfigError, TargetError
from petkit.core.model_delta import ModelDelta
from petkit.core.module_types import is_norm
from petkit.core.registry import Method, MethodDefaults, register
from petkit.core.roles import role_paths, roles_of
from petkit.core.targeting import inside
from petkit.core.unwrapped import named_base_modules
from petkit.models.calls import cache_argument, call_inputs, find_cache
from petkit.models.structure import (
    attention_shape,
    embedding_modules,
    hf_model,
    hidden_size,
    is_causal,
    is_vision,
    layer_stacks,
    own_layers,
)
from petkit.models.taps import LayerTaps, hidden_of, with_hidden

INITS = ("l1", "random")
_ROLES = ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.in", "mlp.out", "norm")  # the parts pruned into the side


@dataclass(frozen=True)
class LstConfig(AdapterConfig):
    """reduction: r, the side network's width divisor. side_layers: backbone layers that feed a side
    layer (None: all). init: l1 (pruned by |W|) or random; Fisher importance needs data, so it is a
    call after adapt(): init_from_fisher(am, batches). gate_temperature: T in μ = σ(α / T)."""

    reduction: int = 8
    side_layers: tuple[int, ...] | None = None
    init: str = "l1"
    gate_temperature: float = 0.1

    def __post_init__(self):
        if isinstance(self.side_layers, list):
            object.__setattr__(self, "side_layers", tuple(self.side_layers))
        super().__post_init__()

    def validate(self):
        check(is_pos_int(self.reduction), f"reduction must be a positive integer, got {self.reduction!r}")
        check(self.side_layers is None or (len(self.side_layers) > 0 and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.side_layers)
            and list(self.side_layers) == sorted(set(self.side_layers))),
            f"side_layers must be increasing layer indices (or null for all), got {self.side_layers!r}")
        check(self.init in INITS, f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        check(is_number(self.gate_temperature) and self.gate_temperature > 0,
              f"gate_temperature must be > 0, got {self.gate_temperature!r}")
        check(not self.targets, "LST has no targets: the side network reads every chosen layer")


class LstDelta(ModelDelta):
    def __init__(self, model: nn.Module, config: LstConfig, init: bool = True):
        super().__init__()
        hf = hf_model(model, "LST")
        backbone = hf.base_model
        self.decoder = _supported(hf, config)
        object.__setattr__(self, "backbone", backbone)  # looked at, not owned
        (self.stack_name, stack), = layer_stacks(backbone)
        object.__setattr__(self, "stack", stack)
        self.side_layers = list(config.side_layers if config.side_layers is not None else range(len(stack)))
        if self.side_layers[-1] >= len(stack):
            raise ConfigError(f"side_layers {self.side_layers} name layers the model lacks: it has {len(stack)} "
                              f"(0..{len(stack) - 1})")
        self.r, self.temperature = config.reduction, config.gate_temperature
        d = hidden_size(hf.config)
        side_config = _side_config(hf.config, self.r, self.side_layers, _ffn_width(backbone, self.stack_name))
        self.side = _side_model(type(backbone), side_config)
        small = d // self.r
        std = getattr(hf.config, "initializer_range", 0.02)
        self.down0 = _linear(d, small, std)
        self.downs = nn.ModuleList(_linear(d, small, std) for _ in self.side_layers)
        self.alphas = nn.Parameter(torch.zeros(len(self.side_layers)))
        self.up = _linear(small, d, std)
        self._side_caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        if init and config.init == "l1":
            self.init_from_importance(lambda name, w: w.abs())

    def describe(self) -> str:
        width = self.up.in_features
        return f"ladder side network of {len(self.side_layers)} layers at width {width} (1/{self.r})"

    # -- init from the pruned backbone ------------------------------------------------------------
    @torch.no_grad()
    def init_from_importance(self, importance) -> None:
        """Copy structured slices of the backbone into the side layers; importance(name, weight) -> a
        tensor of weight's shape (|W| for L1, accumulated squared gradients for Fisher)."""
        config = self.backbone.config
        params = dict(self.backbone.named_parameters())
        embedding = self.backbone.get_input_embeddings().weight
        keep_d = _top(importance("embedding", embedding).sum(0), embedding.shape[1] // self.r)
        heads, (kv_heads, head_dim) = config.num_attention_heads, attention_shape(config)
        playing = {role: role_paths(role, self.backbone) for role in _ROLES}
        for side_layer, i in zip(self._side_stack(), self.side_layers):
            prefix = f"{self.stack_name}.{i}."
            roles = {role: [n for n in params if n.startswith(prefix) and _plays(n, playing[role])
                            and n.endswith("weight")] for role in _ROLES}
            score = None  # per head dim: the product of q, k and v importance, kv heads under their q heads
            for role, count in (("attn.q", heads), ("attn.k", kv_heads), ("attn.v", kv_heads)):
                for n in roles[role]:
                    per_dim = importance(n, params[n]).view(count, head_dim, -1).repeat_interleave(heads // count, 0)
                    score = per_dim if score is None else score * per_dim
            units = None  # per FFN unit: the product over the FFN input projections (BERT 1, Llama gate and up)
            for n in roles["mlp.in"]:
                unit = importance(n, params[n]).sum(1)
                units = unit if units is None else units * unit
            if score is None or units is None:
                raise TargetError(f"LST found no attention or FFN projections in {prefix[:-1]} to prune")
            keep_h = _top(score.sum(dim=(0, 2)), head_dim // self.r)
            q_rows, kv_rows = _per_head(keep_h, heads, head_dim), _per_head(keep_h, kv_heads, head_dim)
            keep_f = _top(units, units.numel() // self.r)
            slices = {"attn.q": (q_rows, keep_d), "attn.k": (kv_rows, keep_d), "attn.v": (kv_rows, keep_d),
                      "attn.out": (keep_d, q_rows), "mlp.in": (keep_f, keep_d), "mlp.out": (keep_d, keep_f),
                      "norm": (keep_d, None)}
            side_params = dict(side_layer.named_parameters())
            for n, value in params.items():
                role = next((r for r in _ROLES if n.startswith(prefix) and _plays(n, playing[r])), None)
                if role is not None:  # weights and their biases alike: rows, then columns of a matrix
                    rows, cols = slices[role]
                    value = value[rows] if value.dim() == 1 or cols is None else value[rows][:, cols]
                    side_params[n[len(prefix):]].copy_(value)
        side_modules = dict(named_base_modules(self.side))
        for name, norm in named_base_modules(self.backbone):  # the final norm(s), outside the layers
            if is_norm(norm) and not inside(name, [self.stack_name]) and name in side_modules:
                for tensor in ("weight", "bias"):
                    value = getattr(norm, tensor, None)
                    if isinstance(value, torch.Tensor) and value.shape[-1] == embedding.shape[1]:
                        getattr(side_modules[name], tensor).copy_(value[..., keep_d])

    def _side_stack(self) -> nn.ModuleList:
        return layer_stacks(self.side)[0][1]

    # -- hooks ----------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        entry = _entry(self.backbone, self.stack_name)
        self._signature = inspect.signature(entry.forward)
        self._side_cache_argument = cache_argument(self.side.forward)
        self._calls = self.hook_call(entry, self._read_call, self._run_side)
        self.taps = LayerTaps(self.hook, self.stack, self._calls, self.side_layers)
        for j, layer in enumerate(self._side_stack()):
            self.hook(layer, pre=True, fn=self._ladder(j))

    def _read_call(self, module, args, kwargs, frame):
        frame["inputs"] = call_inputs(self._signature, args, kwargs, f"LST adapter {self._name!r}")

    def _ladder(self, j: int):
        def mix(module, args, kwargs):
            mu = torch.sigmoid(self.alphas[j] / self.temperature)
            ladder = self.downs[j](self.taps.outputs[self.side_layers[j]])
            # the first side layer reads Down_0(E(x)), not what the side's own embedding stage made
            hidden = self._calls.top["first"] if j == 0 else hidden_of(args, kwargs)
            return with_hidden(args, kwargs, mu * hidden + (1 - mu) * ladder)
        return mix

    def _run_side(self, module, args, kwargs, out, frame):
        inputs = frame["inputs"]
        embedding = self.taps.embedding
        frame["first"] = self.down0(embedding)  # Down_0(E(x)), what the first side layer reads
        ids = torch.zeros(embedding.shape[:2], dtype=torch.long, device=embedding.device)  # the side's vocabulary: 1
        call = {"input_ids": ids, "attention_mask": inputs.get("attention_mask")}
        if self.decoder:
            call.update(position_ids=inputs.get("position_ids"), cache_position=inputs.get("cache_position"))
            cache = find_cache(out)
            if cache is not None:  # the side network keeps its own cache beside the backbone's
                from transformers import DynamicCache
                call.update({self._side_cache_argument: self._side_caches.setdefault(cache, DynamicCache()),
                             "use_cache": True})
        hidden = self.up(self.side(**{k: v for k, v in call.items() if v is not None}).last_hidden_state)
        out.last_hidden_state = hidden
        if getattr(out, "pooler_output", None) is not None and getattr(module, "pooler", None) is not None:
            out.pooler_output = module.pooler(hidden)
        return out


def init_from_fisher(am, batches, name: str = "default") -> None:
    """The official code's init: Fisher importance (Σ over batches of squared gradients of the task
    loss, backbone unfrozen for the measurement only) instead of |W|. batches: dicts with labels."""
    delta = am.model_deltas[name] if name in am.model_deltas else None
    if not isinstance(delta, LstDelta):
        raise ConfigError(f"adapter {name!r} is not an LST adapter")
    params = dict(delta.backbone.named_parameters())
    before = {n: p.requires_grad for n, p in params.items()}
    squares = {n: torch.zeros_like(p) for n, p in params.items()}
    try:
        with am.disabled():  # the backbone's own loss: the side network is not trained yet
            for p in params.values():
                p.requires_grad_(True)
            for batch in batches:
                delta.backbone.zero_grad(set_to_none=True)
                am(**batch).loss.backward()
                for n, p in params.items():
                    if p.grad is not None:
                        squares[n] += p.grad.detach() ** 2
    finally:
        for n, p in params.items():
            p.requires_grad_(before[n])
            p.grad = None
    embedding_name = next(n for n, p in params.items() if p is delta.backbone.get_input_embeddings().weight)
    delta.init_from_importance(lambda n, w: squares[embedding_name if n == "embedding" else n])


def _supported(hf: nn.Module, config: LstConfig) -> bool:
    """Whether the model is a decoder (its side network then keeps a cache); refuses what LST cannot
    ladder here."""
    if is_vision(hf.config):
        raise TargetError(f"LST's side network reads token ids' embeddings; {type(hf).__name__} is a vision model: "
                          "use HST, its side network for ViT")
    stacks = layer_stacks(hf.base_model)
    if len(stacks) != 1:
        raise TargetError(f"LST needs one stack of layers to ladder; {type(hf).__name__} has {len(stacks)} "
                          f"({', '.join(n for n, _ in stacks)}): use it on encoders or decoder-only models")
    own_layers(hf, stacks[0][1], "LST")
    if config.init == "l1":
        roles = roles_of(hf.base_model)
        if not all(roles.parts.get(p) for p in ("q", "k", "v")) or not roles.parts.get("down"):
            raise TargetError(f"LST's l1 init prunes separate q, k, v and Linear FFN projections, which "
                              f"{type(hf).__name__} does not have (fused qkv or expert FFNs): use init='random'")
        embedding = hf.base_model.get_input_embeddings()
        if getattr(embedding, "embedding_dim", None) != hidden_size(hf.config):
            raise TargetError(f"LST's l1 init picks the side's hidden units from the word embedding, which in "
                              f"{type(hf).__name__} is narrower than the hidden size: use init='random'")
    return is_causal(hf)


def _entry(backbone: nn.Module, stack_name: str) -> nn.Module:
    """The innermost module around the layer stack that reads token ids, whose call the side network
    follows: the backbone itself, or OPT's decoder (its LM head model calls that, not OPTModel)."""
    parts = stack_name.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        module = backbone.get_submodule(".".join(parts[:depth]))
        if "input_ids" in inspect.signature(module.forward).parameters:
            return module
    return backbone


def _ffn_width(backbone: nn.Module, stack_name: str) -> int | None:
    """The FFN width of the backbone's layers: what layer 0's down projection reads."""
    modules = dict(named_base_modules(backbone))
    first = [p for p in roles_of(backbone).parts.get("down", ()) if p.startswith(f"{stack_name}.0.")]
    return linear_io(modules[first[0]])[0] if first else None


# Config fields that hold the widths a side network divides by r (names differ across families).
_WIDTHS = {"hidden": ("hidden_size", "n_embd", "d_model", "dim", "embedding_size", "word_embed_proj_dim"),
           "ffn": ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "hidden_dim"),
           "head": ("head_dim", "rotary_dim")}


def _side_config(config, r: int, side_layers: list[int], ff: int | None):
    d = hidden_size(config)
    kv_heads, head_dim = attention_shape(config)
    widths = {"hidden size": d, "head dim": head_dim, **({"FFN width": ff} if ff else {})}
    bad = {k: v for k, v in widths.items() if v is None or v % r}
    if bad:
        fits = [x for x in range(2, 65) if all(v and v % x == 0 for v in widths.values())]
        raise ConfigError(f"reduction={r} does not divide the model's {', '.join(f'{k} {v}' for k, v in bad.items())}; "
                          f"side-network widths must be whole: use one of {fits}")
    side = copy.deepcopy(config)
    for kind, names in _WIDTHS.items():  # read from the backbone's config: aliases (n_embd) set each other
        for name in names:
            value = getattr(config, name, None)
            if isinstance(getattr(type(config), name, None), property):  # derived (Falcon's head_dim)
                continue
            if isinstance(value, int) and not isinstance(value, bool) and (kind != "ffn" or value == ff):
                setattr(side, name, value // r)
    side.num_hidden_layers = len(side_layers)
    if isinstance(getattr(config, "layer_types", None), (list, tuple)):
        side.layer_types = [config.layer_types[i] for i in side_layers]
    side.vocab_size = 1  # the side network's embedding stage is not read (see _ladder)
    if getattr(config, "pad_token_id", None) is not None:
        side.pad_token_id = 0
    return side


def _side_model(cls, config) -> nn.Module:
    """The backbone's class at the side's widths. Its embedding tables (the stage whose output the
    first ladder replaces, DeBERTa's relative positions) stay at their init: buffers, not parameters,
    so they do not train but are saved with the adapter."""
    kwargs = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(cls.__init__).parameters else {}
    side = cls(config, **kwargs)
    for name in embedding_modules(side, layer_stacks(side)):
        for module in side.get_submodule(name).modules():
            for key, param in list(module.named_parameters(recurse=False)):
                delattr(module, key)
                module.register_buffer(key, param.detach())
    return side


def _linear(n_in: int, n_out: int, std: float) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)
    return layer


def _top(score: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(torch.topk(score.flatten(), k).indices).values


def _per_head(keep: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    return (torch.arange(heads)[:, None] * head_dim + keep[None, :]).flatten()


def _plays(name: str, modules) -> bool:
    """Whether parameter `name` belongs to one of `modules` (the paths playing a role)."""
    return name.rsplit(".", 1)[0] in modules


register(Method(
    name="lst", config=LstConfig, kind="model", build=LstDelta, layer_types=(), mergeable=False,
    spec="Sung, Cho & Bansal, NeurIPS 2022 (arXiv 2206.06522); init: official code's structured pruning",
    summary="ladder side-tuning: a 1/r-width side network fed by gated ladders; no backprop through the backbone",
    # bench: LST trains at 3e-3
    bench=MethodDefaults({"reduction": 8}, (1e-3, 3e-3), "side network"),
))
