"""Matrix cases of the low-bit adapters (petkit/methods/lowbit.py): Bi-LoRA and the bottleneck adapter."""

from __future__ import annotations

from method_cases._shapes import io_features, method_layers
from petkit.methods.lowbit import LowbitAdapterConfig, LowbitLoraConfig


def lora_count(am, name):
    """Down (r × in) + Up (out × r) per module: r · (in + out)."""
    r = am.adapter_config(name).r
    return sum(r * sum(io_features(b)) for _, b, _ in method_layers(am, name))


def adapter_count(am, name):
    """Down (r × d) + Up (d × r) per module: the adapter reads the block input, whose width d is the
    output width of the block's closing projection (attn.out / mlp.out) in these models."""
    r = am.adapter_config(name).r
    return sum(2 * r * io_features(b)[1] for _, b, _ in method_layers(am, name))


def near_base(y_adapted, y_base):
    """Quantised adapters start with a tiny non-zero Up (an all-zero tensor cannot be standardised):
    the outputs move, but by less than a tenth of their scale (under 6% in these cases; an Up drawn
    like Down would move them by more than the outputs themselves)."""
    diff = (y_adapted - y_base).abs().max().item()
    assert 0 < diff < 0.1 * y_base.abs().max().item(), diff


CASES = {
    "lowbit-lora-1bit": lambda fam: LowbitLoraConfig(bits=1, r=4, targets=["attn.qkv"]),
    "lowbit-lora-2bit-median": lambda fam: LowbitLoraConfig(bits=2, codebook="median", r=4, dropout=0.0,
                                                            targets=["attn.qkv", "mlp.in"]),
    "lowbit-lora-fp32": lambda fam: LowbitLoraConfig(bits=32, r=4, scale=2.0, targets="all-linear"),
    "lowbit-adapter-1bit": lambda fam: LowbitAdapterConfig(bits=1, r=4),
    "lowbit-adapter-8bit": lambda fam: LowbitAdapterConfig(bits=8, r=4, scale=1.0, dropout=0.0,
                                                           targets=["attn.out", "mlp.out"]),
}
FORMULAS = {"lowbit-lora": lora_count, "lowbit-adapter": adapter_count}
INIT_CHECKS = {case: near_base for case in CASES if not case.endswith("fp32")}
# s = 0.1 (the adapter's default) keeps the branch small; 12 steps need a larger step size to show.
TRAIN_LRS = {"lowbit-adapter-1bit": 3e-2}
