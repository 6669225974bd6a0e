"""Shared helpers of tests/test_quant.py and tests/test_quant_storage.py: tiny models with random
biases, snapshots of the low-bit state, and a float model holding a quantised model's dequantised
weights (the reference every low-bit computation must equal)."""

from __future__ import annotations

import torch
from torch import nn

from petkit.core.module_types import Conv1D
from petkit.quant import PackedLinear, QuantFormat, quantized_layers
from petkit.testing import tiny_bert, tiny_gpt2, tiny_llama

G = 16  # divides every tiny model's input sizes (32, 64)
FAMILIES = {"llama": tiny_llama, "bert": tiny_bert, "gpt2": tiny_gpt2}


def build(family, seed=0, **kw):
    """A tiny model with random (not Hugging Face's zero) linear biases, so a lost bias shows."""
    model = FAMILIES[family](seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") and "LayerNorm" not in name and "ln_" not in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


MAKERS = {f: (lambda f: lambda **kw: build(f, **kw))(f) for f in FAMILIES}


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def rel(a, b):
    return float((a - b).norm() / b.norm())


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before):
    now = model.state_dict()
    assert now.keys() == before.keys()
    changed = [k for k, v in before.items() if not torch.equal(now[k], v)]
    assert not changed, f"changed: {changed[:3]}"


def packed_state(model):
    """Codes, scales and zeros of every low-bit layer (bit-exact snapshot)."""
    return {f"{p}.{k}": t.clone() for p, m in quantized_layers(model).items()
            for k, t in (("codes", m.codes), ("scales", m.scales), ("zeros", m.zeros)) if t is not None}


def assert_packed_equal(model, before):
    now = packed_state(model)
    assert now.keys() == before.keys()
    changed = [k for k in before if not torch.equal(now[k], before[k])]
    assert not changed, f"low-bit state changed: {changed[:3]}"


def dequantized_copy(make, quantized, **kw):
    """A float model of the same family whose quantised layers hold the dequantised weights."""
    model = make(**kw)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for path, layer in quantized_layers(quantized).items():
            path = path.removeprefix("base.")
            m = modules[path]
            w = layer.dequantize()
            m.weight.copy_(w.t() if Conv1D and isinstance(m, Conv1D) else w)
            if layer.bias is not None:
                m.bias.copy_(layer.bias)
    return model


def noisy(am, name="default", seed=0, std=0.2):
    """Trained-like adapter weights (LoRA's B starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in am.adapter_parameters(name, include_head=False).values():
            t.add_(torch.randn(t.shape, generator=g) * std)


def copy_trainable(src, dst):
    mine = dict(dst.named_parameters())
    with torch.no_grad():
        for n, p in src.named_parameters():
            if p.requires_grad:
                mine[n].copy_(p)


def layer(in_f=48, out_f=6, fmt=QuantFormat("int", 3, G), bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g))
        if bias:
            lin.bias.copy_(torch.randn(out_f, generator=g))
    return PackedLinear.from_linear(lin, fmt)


def gaussian(out_f, in_f, seed=0):
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed))


