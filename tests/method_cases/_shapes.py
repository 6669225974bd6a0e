"""Layer-shape helpers for the trainable-parameter formulas of the matrix cases."""

from __future__ import annotations

from torch import nn

from petkit.core.module_types import Conv1D, is_norm


def io_features(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, Conv1D):
        return m.weight.shape
    if isinstance(m, nn.Embedding):
        return m.num_embeddings, m.embedding_dim
    if isinstance(m, nn.Conv2d):
        return m.in_channels * m.kernel_size[0] * m.kernel_size[1], m.out_channels
    raise TypeError(type(m))


def out_features(m: nn.Module) -> int:
    if is_norm(m):
        return m.weight.numel()
    return io_features(m)[1]


def method_layers(am, name):
    """(path, base layer, delta) of the method itself, without the task head it may train."""
    return [(p, layer.base_layer, d) for p, layer, d in am.layers(name) if type(d).__name__ != "HeadDelta"]


def lora_count(am, name):
    cfg = am.adapter_config(name)
    return sum(cfg.rank_and_scale(p, am.base)[0] * sum(io_features(b)) for p, b, _ in method_layers(am, name))
