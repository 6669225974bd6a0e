"""The kinds of base-model module petkit tells apart: linear layers (GPT-2's Conv1D and low-bit linear
layers among them) and norms."""

from __future__ import annotations

import torch
from torch import nn

try:  # GPT-2's Conv1D is a linear layer with a transposed weight
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = ()


class QuantizedWeight(nn.Module):
    """A module whose frozen weight is stored in a low-bit format (`petkit.quant` implements it).
    `weight` reads as the dequantised float weight, in the layout of the float module it stands for.
    That is a fresh copy: writing into it changes nothing."""

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:  # pragma: no cover
        """The float weight as stored: (out, in) for a linear layer, (num, dim) for an embedding."""
        raise NotImplementedError

    def float_shape(self) -> tuple[int, ...]:  # pragma: no cover
        """The shape of the float weight this one stands for (what a fingerprint names)."""
        raise NotImplementedError

    def sample(self, flat_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """The dequantised weight at these flat positions of the float weight's layout, and how far
        rounding may have moved each from the float value it came from (the fingerprint's tolerance)."""
        raise NotImplementedError


class QuantizedLinear(QuantizedWeight):
    """A low-bit linear layer. The engine wraps it like nn.Linear: `in_features`, `out_features`, `bias`
    (a float parameter or None) and `weight` (the dequantised (out, in) weight). Merging goes through
    `merging()`, which hands out a float weight to change in place and stores it back on exit."""

    in_features: int
    out_features: int
    # The float layer it stands for stored its weight as (in, out) (GPT-2's Conv1D): the fingerprint
    # reads the weight in that layout, so the quantised copy keeps the float base's fingerprint.
    transposed: bool = False

    def merging(self, undo: bool = False):  # pragma: no cover
        """Context manager yielding a record; inside it `weight` is a float tensor to change in place.
        On exit the weight is re-quantised and the record holds the errors (`weight_error`, the change
        lost to rounding as `delta_error`); with undo=True the state before the matching merge comes
        back exactly instead."""
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantize()


class QuantizedEmbedding(QuantizedWeight):
    """A low-bit embedding table: `num_embeddings`, `embedding_dim`; rows are dequantised as looked up."""

    num_embeddings: int
    embedding_dim: int

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantize()


LINEAR_TYPES = (nn.Linear, QuantizedLinear) + ((Conv1D,) if Conv1D else ())


def is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or name.endswith(("RMSNorm", "LayerNorm"))
