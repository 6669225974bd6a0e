"""Init conditions shared by several methods' matrix cases."""

from __future__ import annotations

import torch


def differs_from_base(y_adapted, y_base):
    """Not identity at init (extra tokens, a side network): same output shape, different values."""
    assert y_adapted.shape == y_base.shape
    assert not torch.allclose(y_adapted, y_base, atol=1e-6)
