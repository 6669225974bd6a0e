"""Prefix tuning (Li & Liang 2021, arXiv 2101.00190) and deep prompts in their P-tuning v2 form.

Every self-attention layer l reads m trainable keys and values in front of its own:
attention(q, [P_k^l ; K], [P_v^l ; V]). The prefixes of all layers are one table
P ∈ R^{m × (L·2·h_kv·d_h)} (row i holds token i's keys and values of every layer, the Hugging Face
PEFT layout, so files convert without reshuffling). With `projection` (the paper's
reparametrisation, its default) the table is P = MLP(E), E ∈ R^{m×d}, MLP = Linear(d, hidden) →
tanh → Linear(hidden, L·2·h_kv·d_h); `AdaptedModel.fold(name)` computes P once and drops E and the
MLP after training (what PEFT saves, too). Without it (P-tuning v2's deep prompts) P itself trains.

Trainable: m·L·2·h_kv·d_h, or with projection m·d + (d+1)·hidden + (hidden+1)·L·2·h_kv·d_h.
Init: N(0, 1) for P (or E), PyTorch's default for the MLP: the same as PEFT and the P-tuning v2 code.
Not identity at init; not mergeable.

Positions: in decoder-only causal LMs the prefix takes positions 0..m−1 and the input starts at m,
as in the paper's GPT-2 code and in PEFT (a KV cache of m entries does that); encoders (BERT, ViT)
and T5 keep their own positions and the prefix has none (T5: no relative position bias on prefix
keys). Mechanism: `petkit.models.attention` (all families, generation included). Cross-attention
gets no prefix.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch
from torch import nn

from petkit.core.config import AdapterConfig, check, is_pos_int
from petkit.core.errors import AdapterFileError, ConfigError, StateError, TargetError
from petkit.core.model_delta import MODEL_KEY, ModelDelta
from petkit.core.registry import Method, MethodDefaults, register
from petkit.interop.peft_prompt import PromptFormat
from petkit.models.attention import add_prefix, self_attention_modules, uses_attention_interface
from petkit.models.calls import cached_length, call_inputs
from petkit.models.structure import attention_shape, hf_model, hidden_size, layer_stacks, max_positions


@dataclass(frozen=True)
class PrefixTuningConfig(AdapterConfig):
    """num_virtual_tokens: prefix length m. projection: train through the reparametrisation MLP
    (fold it away after training); projection_hidden: its hidden width (None: the model's width).
    compensate: renormalise the attention weights on the prefix to sum to 1 in every query row (LAE's
    prefix compensation, Gao et al. 2023: the prefix then learns as fast as an adapter)."""

    num_virtual_tokens: int = 20
    projection: bool = True
    projection_hidden: int | None = None
    compensate: bool = False

    def validate(self):
        check(is_pos_int(self.num_virtual_tokens),
              f"num_virtual_tokens must be a positive integer, got {self.num_virtual_tokens!r}")
        check(isinstance(self.projection, bool), f"projection must be true or false, got {self.projection!r}")
        check(self.projection_hidden is None or is_pos_int(self.projection_hidden),
              f"projection_hidden must be a positive integer or null, got {self.projection_hidden!r}")
        check(self.projection or self.projection_hidden is None, "projection_hidden needs projection=true")
        check(isinstance(self.compensate, bool), f"compensate must be true or false, got {self.compensate!r}")
        check(not self.targets, "prefix tuning has no targets: every self-attention layer gets a prefix")


class PrefixDelta(ModelDelta):
    def __init__(self, model: nn.Module, config: PrefixTuningConfig, init: bool = True):
        super().__init__()
        object.__setattr__(self, "hf", hf_model(model, "prefix tuning"))  # looked at, not owned
        self.m, self.compensate = config.num_virtual_tokens, config.compensate
        self.kv_heads, self.head_dim = attention_shape(self.hf.config)
        object.__setattr__(self, "attention", _attention_modules(self.hf))
        self.causal = not getattr(self.hf.config, "is_encoder_decoder", False) and any(
            getattr(a, "is_causal", False) for a in self.attention)
        self.max_positions = max_positions(self.hf.config) if self.causal else None
        if self.max_positions is not None and self.m >= self.max_positions:
            raise ConfigError(f"num_virtual_tokens={self.m} leaves no room for input: the model reads at most "
                              f"{self.max_positions} positions; use fewer virtual tokens")
        width = len(self.attention) * 2 * self.kv_heads * self.head_dim
        if config.projection:
            d = hidden_size(self.hf.config)
            hidden = config.projection_hidden or d
            self.embedding = nn.Parameter(torch.zeros(self.m, d))
            self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, width))
        else:
            self.table = nn.Parameter(torch.zeros(self.m, width))
        if init:
            with torch.no_grad():
                (self.embedding if config.projection else self.table).normal_()

    def describe(self) -> str:
        how = "through an MLP" if hasattr(self, "mlp") else "trained directly"
        return f"{self.m} key/value prefix tokens in {len(self.attention)} attention layers ({how})"

    def prefixes(self) -> torch.Tensor:
        """P, shaped (layers, 2, kv heads, m, head dim)."""
        table = self.mlp(self.embedding) if hasattr(self, "mlp") else self.table
        return table.view(self.m, len(self.attention), 2, self.kv_heads, self.head_dim).permute(1, 2, 3, 0, 4)

    def layer_prefix(self, layer: int) -> torch.Tensor:
        """P of one layer, shaped (2, kv heads, m, head dim): its columns of the table (through the
        MLP's rows for them). Computed where the layer reads it and from nothing the forward left
        behind, so a layer recomputed under activation checkpointing, or a nested forward, gets it the
        same way."""
        width = 2 * self.kv_heads * self.head_dim
        columns = slice(layer * width, (layer + 1) * width)
        if hasattr(self, "mlp"):
            first, tanh, last = self.mlp
            table = nn.functional.linear(tanh(first(self.embedding)), last.weight[columns], last.bias[columns])
        else:
            table = self.table[:, columns]
        return table.view(self.m, 2, self.kv_heads, self.head_dim).permute(1, 2, 0, 3)

    @torch.no_grad()
    def fold(self, config: PrefixTuningConfig) -> PrefixTuningConfig:
        """Replace the MLP by the table it computes; returns the config that describes the result."""
        if not hasattr(self, "mlp"):
            return config
        table = self.mlp(self.embedding).detach().clone()
        del self.embedding, self.mlp
        self.table = nn.Parameter(table)
        return replace(config, projection=False, projection_hidden=None)

    # -- hooks ----------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        core = self.hf.base_model  # (GPT2Model, LlamaModel, ...): every path to the layers goes through it
        self._signature = inspect.signature(core.forward)
        if self.causal:
            self.hook(core, pre=True, fn=self._shift_positions)
        for layer, module in enumerate(self.attention):
            self._handles.append(_Removable(add_prefix(self.hf, module, self._provider(layer))))

    def _provider(self, layer: int):
        def provide(batch: int):
            if not self._is_live():
                return None
            kv = self.layer_prefix(layer)
            return kv[0].expand(batch, -1, -1, -1), kv[1].expand(batch, -1, -1, -1), self.compensate
        return provide

    def _shift_positions(self, module, args, kwargs):
        """Decoder-only models: the input's positions start after the prefix, m."""
        inputs = call_inputs(self._signature, args, kwargs, f"prefix adapter {self._name!r}")
        reference = inputs.get("input_ids")
        if reference is None:
            reference = inputs.get("inputs_embeds")
        if reference is None:
            raise StateError(f"prefix adapter {self._name!r} needs input_ids or inputs_embeds")
        batch, length = reference.shape[:2]
        positions = inputs.get("position_ids")
        if positions is None:
            positions = inputs.get("cache_position")
            if positions is None:
                past = cached_length(inputs)
                positions = torch.arange(past, past + length, device=reference.device)
            positions = positions.expand(batch, -1)
        positions = positions + self.m
        if self.max_positions is not None and int(positions.max()) >= self.max_positions:
            raise ConfigError(f"the prefix ({self.m}) and the input reach position {int(positions.max())}, past the "
                              f"model's {self.max_positions} positions; truncate inputs to "
                              f"{self.max_positions - self.m} tokens")
        inputs["position_ids"] = positions
        return (), inputs


class _Removable:
    """A hook handle for a remove function, so release() treats prefixes like hooks."""

    def __init__(self, remove):
        self.remove = remove


def _attention_modules(hf: nn.Module) -> list[nn.Module]:
    stacks = layer_stacks(hf)
    found = [a for _, stack in stacks for layer in stack for a in self_attention_modules(layer)]
    if not found:
        raise TargetError(f"prefix tuning found no self-attention layers in {type(hf).__name__} (it looks for "
                          "nn.ModuleLists of identical blocks holding *Attention modules)")
    own = sorted({type(a).__name__ for a in found if not uses_attention_interface(a)})
    if own:
        raise TargetError(f"prefix keys and values go in through transformers' attention interface, which "
                          f"{', '.join(own)} does not use ({type(hf).__name__} computes its attention itself, "
                          "with its own positions and cache): use prompt tuning, LoRA or IA3 on this model")
    return found


# -- Hugging Face PEFT's format: PREFIX_TUNING ---------------------------------------------------------

def _peft_table(am, name: str):
    delta = am.model_deltas[name]
    if delta.compensate:
        raise ConfigError("PEFT has no prefix compensation, so a PEFT file would run this prefix differently: save "
                          "it with format='petkit'")
    if not delta.causal:
        raise ConfigError(f"PEFT runs prefixes as a KV cache, which {type(delta.hf).__name__} does not take on its "
                          "encoder; PEFT prefix files are written for decoder-only causal LMs: save this "
                          "adapter with format='petkit'")
    with torch.no_grad():  # folded: an MLP-trained prefix is written as its table, as PEFT saves it
        table = delta.prefixes().permute(3, 0, 1, 2, 4).reshape(delta.m, -1)
    token_dim = delta.kv_heads * delta.head_dim
    return table, {"token_dim": token_dim, "num_attention_heads": delta.kv_heads, "num_layers": len(delta.attention),
                   "encoder_hidden_size": token_dim, "prefix_projection": False}


def _add_from_peft(am, name: str, m: int, train_head, config: dict, folder) -> str:
    am.add(PrefixTuningConfig(num_virtual_tokens=m, projection=False, train_head=train_head), name, init=False)
    delta = am.model_deltas[name]
    # the file's layers and token_dim must be this model's (the tensor shape check comes after)
    for key, value in {"num_layers": len(delta.attention), "token_dim": delta.kv_heads * delta.head_dim}.items():
        if config.get(key) not in (None, value):
            raise AdapterFileError(f"{folder}: this prefix was made for {key}={config[key]!r}, the model has {value}")
    return f"{MODEL_KEY}.table"


PEFT = PromptFormat("PREFIX_TUNING", table=_peft_table, add=_add_from_peft)


register(Method(
    name="prefix", config=PrefixTuningConfig, kind="model", build=PrefixDelta, layer_types=(), mergeable=False,
    spec="Li & Liang 2021 (arXiv 2101.00190); P-tuning v2 without projection (Liu et al. 2022, arXiv 2110.07602)",
    summary="trainable key/value prefixes in every self-attention layer (optional MLP, folded after training)",
    peft=PEFT,
    # bench: through the MLP (the paper's)
    bench=MethodDefaults({"num_virtual_tokens": 20}, (1e-3, 5e-3), "prompt"),
))
