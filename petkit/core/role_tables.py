"""Role tables: where each part of a block sits in the module names of a model family.

A table maps parts (core/role_structure.py PARTS: q, k, v, qkv for a fused projection, out, their
cross-attention x-versions, gate, up, gate_up, down) to a regex searched at the end of a module's
full name. The families listed are those PEFT's default-target tables name (LoRA, IA³ and IA³
feed-forward, peft/utils/constants.py), plus ViT; any other model type gets its roles from its
structure. Norms are found from structure for every family.
"""

from __future__ import annotations

_BERT = {  # BERT-style encoders; DeBERTa-v2 names its projections query_proj, key_proj, value_proj
    "q": r"attention\.self\.query(_proj)?",
    "k": r"attention\.self\.key(_proj)?",
    "v": r"attention\.self\.value(_proj)?",
    "out": r"attention\.output\.dense",
    "up": r"intermediate\.dense",
    "down": r"layer\.\d+\.output\.dense",
}
_DEBERTA = {**{k: v for k, v in _BERT.items() if k not in ("q", "k", "v")}, "qkv": r"attention\.self\.in_proj"}
_GPT2 = {"qkv": r"attn\.c_attn", "out": r"attn\.c_proj", "up": r"mlp\.c_fc", "down": r"mlp\.c_proj"}
_LLAMA = {
    "q": r"self_attn\.q_proj",
    "k": r"self_attn\.k_proj",
    "v": r"self_attn\.v_proj",
    "out": r"self_attn\.o_proj",
    "gate": r"mlp\.gate_proj",
    "up": r"mlp\.up_proj",
    "down": r"mlp\.down_proj",
}
_T5 = {
    "q": r"SelfAttention\.q", "k": r"SelfAttention\.k", "v": r"SelfAttention\.v", "out": r"SelfAttention\.o",
    "xq": r"EncDecAttention\.q", "xk": r"EncDecAttention\.k", "xv": r"EncDecAttention\.v", "xout": r"EncDecAttention\.o",
    "gate": r"DenseReluDense\.wi_0",
    "up": r"DenseReluDense\.wi(_1)?",
    "down": r"DenseReluDense\.wo",
}
_VIT = {  # transformers >= 5 names (attention.q_proj, mlp.fc1) and the 4.x ones (attention.attention.query)
    "q": r"attention\.(attention\.query|q_proj)",
    "k": r"attention\.(attention\.key|k_proj)",
    "v": r"attention\.(attention\.value|v_proj)",
    "out": r"attention\.(output\.dense|o_proj)",
    "up": r"(intermediate\.dense|mlp\.fc1)",
    "down": r"(layer\.\d+\.output\.dense|mlp\.fc2)",
}
_NEOX = {  # GPT-NeoX (attention.*), BLOOM, Falcon and ChatGLM (self_attention.*): q, k and v fused
    "qkv": r"(self_)?attention\.query_key_value",
    "out": r"(self_)?attention\.dense",
    "up": r"mlp\.dense_h_to_4h",
    "down": r"mlp\.dense_4h_to_h",
}
_OPT = {  # OPT and BART (whose decoder also has cross-attention, encoder_attn)
    "q": r"self_attn\.q_proj", "k": r"self_attn\.k_proj", "v": r"self_attn\.v_proj", "out": r"self_attn\.out_proj",
    "xq": r"encoder_attn\.q_proj", "xk": r"encoder_attn\.k_proj", "xv": r"encoder_attn\.v_proj",
    "xout": r"encoder_attn\.out_proj",
    "up": r"layers\.\d+\.fc1",
    "down": r"layers\.\d+\.fc2",
}
_GPTJ = {"q": r"attn\.q_proj", "k": r"attn\.k_proj", "v": r"attn\.v_proj", "out": r"attn\.out_proj",
         "up": r"mlp\.fc_in", "down": r"mlp\.fc_out"}
_CODEGEN = {"qkv": r"attn\.qkv_proj", "out": r"attn\.out_proj", "up": r"mlp\.fc_in", "down": r"mlp\.fc_out"}
_GPT_NEO = {"q": r"attn\.attention\.q_proj", "k": r"attn\.attention\.k_proj", "v": r"attn\.attention\.v_proj",
            "out": r"attn\.attention\.out_proj", "up": r"mlp\.c_fc", "down": r"mlp\.c_proj"}
_PHI = {"q": r"self_attn\.q_proj", "k": r"self_attn\.k_proj", "v": r"self_attn\.v_proj", "out": r"self_attn\.dense",
        "up": r"mlp\.fc1", "down": r"mlp\.fc2"}
_MPT = {"qkv": r"attn\.Wqkv", "out": r"attn\.out_proj", "up": r"ffn\.up_proj", "down": r"ffn\.down_proj"}
_NEMOTRON_H = {"q": r"mixer\.q_proj", "k": r"mixer\.k_proj", "v": r"mixer\.v_proj", "out": r"mixer\.o_proj",
               "up": r"mixer\.up_proj", "down": r"mixer\.down_proj"}  # its Mamba mixers have no roles
_RWKV = {  # time mixing stands in for attention (its receptance has no role); channel mixing is the MLP
    "k": r"attention\.key", "v": r"attention\.value", "out": r"attention\.output",
    "up": r"feed_forward\.key", "down": r"feed_forward\.value",
}

FAMILIES: dict[str, dict[str, str]] = {
    "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT, "electra": _BERT, "layoutlm": _BERT, "deberta-v2": _BERT,
    "deberta": _DEBERTA,
    "gpt2": _GPT2, "gpt_bigcode": _GPT2,
    "llama": _LLAMA, "mistral": _LLAMA, "mixtral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "stablelm": _LLAMA,
    "gemma": _LLAMA, "gemma2": _LLAMA, "gemma3_text": _LLAMA,
    "t5": _T5, "mt5": _T5,
    "vit": _VIT,
    "gpt_neox": _NEOX, "bloom": _NEOX, "falcon": _NEOX, "RefinedWeb": _NEOX, "RefinedWebModel": _NEOX,
    "chatglm": _NEOX,
    "opt": _OPT, "bart": _OPT,
    "gptj": _GPTJ, "codegen": _CODEGEN, "gpt_neo": _GPT_NEO, "phi": _PHI, "mpt": _MPT,
    "nemotron_h": _NEMOTRON_H, "rwkv": _RWKV,
}

# PEFT's default LoRA targets per model type, in roles, where they are not attention q and v (or the
# fused qkv of a model without separate q and v): the rule covers every other entry of its table.
LORA_DEFAULT_EXCEPTIONS: dict[str, tuple[str, ...]] = {
    "phi": ("attn.q", "attn.v", "mlp.in", "mlp.out"),
    "nemotron_h": ("attn.q", "attn.k", "attn.v", "attn.out"),
    "btlm": ("attn.qkv", "attn.out", "mlp.out"),
    "rwkv": ("key", "value", "receptance", "output"),  # every linear of a block: names, not roles
    "rwkv7": ("r_proj", "k_proj", "v_proj", "o_proj", "key", "value"),
    "gemma4": (r"re:.*language_model\..*\.(q_proj|v_proj)",),  # the language model's attention only
}
