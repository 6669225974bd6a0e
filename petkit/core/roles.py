"""Role names: "attention q and v" instead of `encoder.layer.3.attention.self.query`.

A role maps to a regex searched at the end of a module's full name, per model family. The family
comes from `model.config.model_type`. Families not listed fall back to names and regexes.
"""

from __future__ import annotations

from petkit.core.errors import TargetError

_BERT = {
    "attn.q": r"attention\.self\.query",
    "attn.k": r"attention\.self\.key",
    "attn.v": r"attention\.self\.value",
    "attn.qkv": r"attention\.self\.(query|key|value)",
    "attn.kv": r"attention\.self\.(key|value)",
    "attn.out": r"attention\.output\.dense",
    "mlp.in": r"intermediate\.dense",
    "mlp.out": r"layer\.\d+\.output\.dense",
    "norm": r"(LayerNorm)",
}
_GPT2 = {
    "attn.qkv": r"attn\.c_attn",
    "attn.kv": r"attn\.c_attn",  # fused with q: the closest GPT-2 has (PEFT's IA3 default does the same)
    "attn.out": r"attn\.c_proj",
    "mlp.in": r"mlp\.c_fc",
    "mlp.out": r"mlp\.c_proj",
    "norm": r"(ln_1|ln_2|ln_f)",
}
_LLAMA = {
    "attn.q": r"self_attn\.q_proj",
    "attn.k": r"self_attn\.k_proj",
    "attn.v": r"self_attn\.v_proj",
    "attn.qkv": r"self_attn\.(q|k|v)_proj",
    "attn.kv": r"self_attn\.(k|v)_proj",
    "attn.out": r"self_attn\.o_proj",
    "mlp.gate": r"mlp\.gate_proj",
    "mlp.up": r"mlp\.up_proj",
    "mlp.in": r"mlp\.(gate|up)_proj",
    "mlp.out": r"mlp\.down_proj",
    "norm": r"(input_layernorm|post_attention_layernorm|model\.norm)",
}
_T5 = {  # self- and cross-attention both answer to attn.*; xattn.* is cross-attention only
    "attn.q": r"(SelfAttention|EncDecAttention)\.q",
    "attn.k": r"(SelfAttention|EncDecAttention)\.k",
    "attn.v": r"(SelfAttention|EncDecAttention)\.v",
    "attn.qkv": r"(SelfAttention|EncDecAttention)\.(q|k|v)",
    "attn.kv": r"(SelfAttention|EncDecAttention)\.(k|v)",
    "attn.out": r"(SelfAttention|EncDecAttention)\.o",
    "xattn.q": r"EncDecAttention\.q",
    "xattn.k": r"EncDecAttention\.k",
    "xattn.v": r"EncDecAttention\.v",
    "xattn.out": r"EncDecAttention\.o",
    "mlp.in": r"DenseReluDense\.wi(_0|_1)?",
    "mlp.out": r"DenseReluDense\.wo",
    "norm": r"layer_norm",
}
_VIT = {  # transformers >= 5 names (attention.q_proj, mlp.fc1) and the 4.x ones (attention.attention.query)
    "attn.q": r"attention\.(attention\.query|q_proj)",
    "attn.k": r"attention\.(attention\.key|k_proj)",
    "attn.v": r"attention\.(attention\.value|v_proj)",
    "attn.qkv": r"attention\.(attention\.(query|key|value)|(q|k|v)_proj)",
    "attn.kv": r"attention\.(attention\.(key|value)|(k|v)_proj)",
    "attn.out": r"attention\.(output\.dense|o_proj)",
    "mlp.in": r"(intermediate\.dense|mlp\.fc1)",
    "mlp.out": r"(layer\.\d+\.output\.dense|mlp\.fc2)",
    "norm": r"(layernorm_before|layernorm_after|layernorm)",
}

FAMILIES: dict[str, dict[str, str]] = {
    "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT, "electra": _BERT,
    "gpt2": _GPT2,
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA,
    "t5": _T5, "mt5": _T5,
    "vit": _VIT,
}

# Roles a family cannot express, with the reason (GPT-2 fuses q, k and v in one Conv1D).
_UNSPLIT = {"gpt2": {"attn.q", "attn.k", "attn.v"}}

ALL_ROLES = sorted({role for table in FAMILIES.values() for role in table})


def family_of(model) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def role_regex(role: str, family: str | None) -> str | None:
    """The regex for `role` in `family`, or None when `role` is not a role name at all."""
    if role not in ALL_ROLES:
        return None
    if family in _UNSPLIT and role in _UNSPLIT[family]:
        raise TargetError(f"{family} fuses q, k and v into one layer (attn.c_attn); target 'attn.qkv' instead of {role!r}")
    table = FAMILIES.get(family or "")
    if table is None:
        known = ", ".join(sorted(FAMILIES))
        raise TargetError(
            f"role name {role!r} needs a known model family ({known}), but this model is {family or 'unknown'}; "
            "target module names or 're:<regex>' instead"
        )
    if role not in table:
        raise TargetError(f"{family} models have no role {role!r}; their roles are {', '.join(sorted(table))}")
    return table[role]
