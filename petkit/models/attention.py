"""Extra keys and values in front of a transformers model's own: the mechanism of prefix tuning.

transformers routes every attention call through `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`
with the module, the queries and the keys and values after projection, rotary embedding and the KV
cache. `add_prefix` registers a provider for one attention module and switches the model to
"petkit+eager" or "petkit+sdpa": the wrapper of the model's own implementation that, for modules with
live providers, puts their keys and values in front and widens the mask (and T5's position bias)
by the same m columns, all allowed. Every other module runs the original function untouched, and
the model goes back to its own implementation when its last provider is removed. The two wrappers
are added to transformers' attention (and mask) tables under their own names only, through the
tables' `register`, once, while some module has a provider, and taken out with the last
provider: models that were never adapted never reach them and run bit for bit as before.

This works for every family that uses the interface (BERT, GPT-2, Llama, T5, ViT and most others),
also those that do not accept a KV cache (encoders), and leaves the cache holding real tokens only,
so generation needs nothing special.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable

import torch
from torch import nn

from petkit.core.errors import StateError, TargetError

# module -> providers; a provider returns (keys, values) of shape (batch, kv heads, m, head dim), or
# (keys, values, compensate) to renormalise the prefix's attention mass (LAE), or None
_PROVIDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PREFIX = "petkit+"
_WRAPPABLE = ("eager", "sdpa")

Provider = Callable[[int], "tuple[torch.Tensor, torch.Tensor] | None"]


def self_attention_modules(layer: nn.Module) -> list[nn.Module]:
    """The modules of one transformer layer that run self-attention: the innermost modules named
    *Attention (the ones that call the attention function), cross-attention left out."""
    found = []
    for path, module in layer.named_modules():
        name = type(module).__name__
        if not name.endswith("Attention") or "Cross" in name or any(
                type(c).__name__.endswith("Attention") for c in module.modules() if c is not module):
            continue
        if getattr(module, "is_cross_attention", False) or is_cross_attention_path(path):
            continue
        found.append(module)
    return found


def uses_attention_interface(module: nn.Module) -> bool:
    """Whether an attention module computes attention through transformers' attention interface (its
    modeling file looks the function up in ALL_ATTENTION_FUNCTIONS), the one place `add_prefix` can
    put keys and values in. BLOOM, MPT, GPT-Neo and DeBERTa compute attention themselves."""
    source = sys.modules.get(type(module).__module__)
    return hasattr(source, "ALL_ATTENTION_FUNCTIONS") and hasattr(source, "eager_attention_forward")


def is_cross_attention_path(path: str) -> bool:
    """Module paths of cross-attention: T5's EncDecAttention, BERT/GPT-2's crossattention."""
    return "encdec" in path.lower() or "cross" in path.lower()


def add_prefix(hf_model: nn.Module, module: nn.Module, provider: Provider) -> Callable[[], None]:
    """Put provider's keys and values in front of module's; returns the function that takes them out."""
    _install()
    config = hf_model.config
    current = config._attn_implementation
    if not current.startswith(_PREFIX):
        if current not in _WRAPPABLE:
            raise TargetError(f"prefix keys and values need eager or sdpa attention; this model uses {current!r}: "
                              "load it with attn_implementation='sdpa'")
        hf_model.set_attn_implementation(_PREFIX + current)
    _PROVIDERS.setdefault(module, []).append(provider)

    def remove() -> None:
        providers = _PROVIDERS.get(module, [])
        if provider in providers:
            providers.remove(provider)
        if not providers:
            _PROVIDERS.pop(module, None)
        own = hf_model.config._attn_implementation
        if own.startswith(_PREFIX) and not any(m in _PROVIDERS for m in hf_model.modules()):
            hf_model.set_attn_implementation(own[len(_PREFIX):])
        uninstall_if_unused()
    return remove


def _interfaces():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    return AttentionInterface, AttentionMaskInterface


def installed() -> bool:
    """Whether petkit's attention wrappers are in transformers' tables."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    return _PREFIX + _WRAPPABLE[0] in ALL_ATTENTION_FUNCTIONS


def _install() -> None:
    # the class-wide tables (`register`), not one instance's: transformers' mask code looks names up there
    if installed():
        return
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    attention, masks = _interfaces()
    for name in _WRAPPABLE:
        attention.register(_PREFIX + name, _wrapper(name))
        masks.register(_PREFIX + name, ALL_MASK_ATTENTION_FUNCTIONS[name])


def uninstall_if_unused() -> None:
    """Take the wrappers out of transformers' tables when no module has a provider (run when a prefix
    is removed; a model dropped while adapted leaves its providers with it, at garbage collection)."""
    if _PROVIDERS:
        return
    # transformers has no unregister: take petkit's own names out of the class-wide tables `register` filled
    for interface in _interfaces():
        for name in _WRAPPABLE:
            interface._global_mapping.pop(_PREFIX + name, None)


def _original(name: str, module: nn.Module) -> Callable:
    if name == "eager":  # each modeling file has its own eager function (T5 adds its position bias there)
        return sys.modules[type(module).__module__].eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    return ALL_ATTENTION_FUNCTIONS[name]


def _wrapper(name: str) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        prefixes = [kv for p in _PROVIDERS.get(module, ()) if (kv := p(query.shape[0])) is not None]
        if prefixes:
            m = sum(kv[0].shape[2] for kv in prefixes)
            for kv in prefixes:
                if kv[0].shape[1] != key.shape[1] or kv[0].shape[3] != key.shape[3]:
                    raise StateError(f"prefix of shape {tuple(kv[0].shape)} does not fit {type(module).__name__}'s keys "
                                     f"{tuple(key.shape)} (kv heads, head dim)")
            key = torch.cat([kv[0].to(key.dtype) for kv in prefixes] + [key], dim=2)
            value = torch.cat([kv[1].to(value.dtype) for kv in prefixes] + [value], dim=2)
            attention_mask = _widen_mask(attention_mask, module, query, key, m, additive=name == "eager")
            bias = kwargs.get("position_bias")
            if isinstance(bias, torch.Tensor) and bias.dim() == 4:  # T5: prefix keys carry no position bias
                kwargs["position_bias"] = nn.functional.pad(bias, (m, 0))
            if any(len(kv) > 2 and kv[2] for kv in prefixes):
                return compensated_attention(module, query, key, value, attention_mask, m, **kwargs)
        return _original(name, module)(module, query, key, value, attention_mask, **kwargs)
    return attention


def compensated_attention(module, query, key, value, attention_mask, m: int, scaling=None, dropout: float = 0.0,
                          position_bias=None, **_):
    """Attention whose first m keys (the prefix) get their softmax weights renormalised to sum to 1:
    LAE's prefix compensation (Gao et al. 2023). A prefix's output is otherwise scaled by the attention
    mass λ it happens to get, which makes prefixes learn more slowly than adapters or LoRA."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each kv head serves `groups` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if isinstance(position_bias, torch.Tensor):
        scores = scores + position_bias
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[2]]
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    mass = weights[..., :m].sum(-1, keepdim=True)
    weights = torch.cat([weights[..., :m] / mass.clamp_min(1e-12), weights[..., m:]], dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _widen_mask(mask, module, query, key, m: int, additive: bool):
    """m allowed columns in front; with no mask, causal modules get an explicit one, since prefixes
    break the square shape that `is_causal` assumes."""
    if mask is not None:
        if mask.dtype == torch.bool:
            return nn.functional.pad(mask, (m, 0), value=True)
        return nn.functional.pad(mask, (m, 0), value=0.0)
    lq, lk = query.shape[2], key.shape[2]
    if not getattr(module, "is_causal", False) or lq == 1:
        return None
    rows = torch.arange(lq, device=query.device)[:, None] + (lk - lq)
    allowed = torch.arange(lk, device=query.device)[None, :] <= rows
    allowed[:, :m] = True
    if not additive:
        return allowed[None, None]
    return torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(
        ~allowed, torch.finfo(query.dtype).min)[None, None]
