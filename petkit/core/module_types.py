"""The kinds of base-model module petkit tells apart: linear layers (GPT-2's Conv1D and low-bit linear
layers among them) and norms."""

from __future__ import annotations

import torch
from torch import nn

try:  # GPT-2's Conv1D is a linear layer with a transposed weight
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = ()


class QuantizedLinear(nn.Module):
    """The contract of a linear layer whose frozen weight is stored in a low-bit format (`petkit.quant`
    implements it). The engine wraps it like nn.Linear: `in_features`, `out_features`, `bias` (a float
    parameter or None) and `weight`, which reads as the dequantised float (out, in) weight. That is a
    fresh copy: writing into it changes nothing, so merging goes through `merging()`, which hands out
    a float weight to change in place and stores it back in the low-bit format on exit.
    """

    in_features: int
    out_features: int
    # The float layer it stands for stored its weight as (in, out) (GPT-2's Conv1D): the fingerprint
    # reads the weight in that layout, so the quantised copy keeps the float base's fingerprint.
    transposed: bool = False

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def merging(self, undo: bool = False):  # pragma: no cover
        """Context manager yielding a record; inside it `weight` is a float tensor to change in place.
        On exit the weight is re-quantised and the record holds the errors (`weight_error`, the change
        lost to rounding as `delta_error`); with undo=True the state before the matching merge comes
        back exactly instead."""
        raise NotImplementedError

    def sample(self, flat_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """The dequantised weight at these flat (out, in) positions, and how far rounding may have moved
        each from the float weight it came from (the fingerprint's tolerance)."""
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantize()


LINEAR_TYPES = (nn.Linear, QuantizedLinear) + ((Conv1D,) if Conv1D else ())


def is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or name.endswith(("RMSNorm", "LayerNorm"))
