"""Representation similarity between two sets of features of the same examples: linear CKA.

Linear centred kernel alignment (Kornblith et al., 2019) of X (n × p) and Y (n × q), rows the same n
examples:

    CKA(X, Y) = ‖Yᶜᵀ Xᶜ‖²_F / (‖Xᶜᵀ Xᶜ‖_F · ‖Yᶜᵀ Yᶜ‖_F),   Xᶜ, Yᶜ = X, Y with column means removed.

It is 1 for identical features, invariant to an orthogonal transform and an isotropic scale of either
side (so a rotated or rescaled layer still counts as "the same representation"), and not invariant to
an arbitrary invertible linear map.
"""

from __future__ import annotations

import torch

from petkit.core.errors import ConfigError


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature matrices over the same examples (rows); see the module docstring."""
    if x.dim() != 2 or y.dim() != 2:
        raise ConfigError(f"linear_cka needs two 2-D (examples × features) tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"linear_cka needs the same examples on both sides, got {x.shape[0]} and {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise ConfigError("linear_cka needs at least 2 examples")
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    # The feature-space form: p × q products, cheap when there are more examples than features.
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if norm == 0:
        raise ConfigError("linear_cka is undefined for constant features (zero variance on one side)")
    return float(cross / norm)


def cka_per_layer(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> dict[int, float]:
    """Linear CKA layer by layer, for the layers both feature sets hold."""
    layers = sorted(set(a) & set(b))
    if not layers:
        raise ConfigError(f"no layer in common: {sorted(a)} against {sorted(b)}")
    return {i: linear_cka(a[i], b[i]) for i in layers}
