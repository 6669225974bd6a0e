"""The MEND editor (Mitchell et al., ICLR 2022): a small network that maps each rank-1 gradient factor
pair (u, δ) of an edited layer to a pseudo-gradient, W̃ = W − α_ℓ Σ_n δ̃_n ũ_nᵀ.

One editor per weight shape, shared by every layer of that shape, told apart by per-layer scale and
shift embeddings ("modes"). Each input is normalised by running statistics (updated only in training);
[u; δ] then passes through an MLP of low-rank residual layers whose up-projection starts at zero, so
the editor starts as the identity. α_ℓ is learned per layer, from edit_lr.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from petkit.core.errors import ConfigError
from petkit.edit.hooks import rank_one_sum
from petkit.edit.targets import default_targets, linear_modules, weight_shapes

SIGNS = ("paper", "code")


@dataclass(frozen=True)
class MendConfig:
    """targets: module paths of the edited linear layers. rank: of each residual layer (the paper's
    min(1920, width)). sign: "paper" applies W − α∇̃W; "code" the released code's W + α∇̃W (a confirmed
    bug the training learns around by flipping the pseudo-gradient)."""

    targets: tuple[str, ...]
    rank: int = 1920
    n_hidden: int = 1
    edit_lr: float = 1e-4
    normalize: bool = True
    sign: str = "paper"

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError(f"targets must be a non-empty list of layer paths, got {list(self.targets)!r}")
        for name in ("rank", "n_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "rank" else 0):
                raise ConfigError(f"{name} must be a {'positive' if name == 'rank' else 'non-negative'} int, got {value!r}")
        if not isinstance(self.edit_lr, (int, float)) or not self.edit_lr > 0:
            raise ConfigError(f"edit_lr must be a positive number, got {self.edit_lr!r}")
        if self.sign not in SIGNS:
            raise ConfigError(f"sign must be one of {SIGNS}, got {self.sign!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}


class RunningNorm(nn.Module):
    """(x − mean) / (std + 1e-7) per feature, with mean and std over every row seen in training
    (Welford/Chan merges of batches). With fewer than two rows seen it passes x through."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("m2", torch.zeros(dim))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        batch_mean = x.mean(0)
        total = self.count + n
        shift = batch_mean - self.mean
        self.m2 += ((x - batch_mean) ** 2).sum(0) + shift ** 2 * self.count * n / total
        self.mean += shift * n / total
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(x.detach())
        if self.count < 2:
            return x
        std = (self.m2 / (self.count - 1)).sqrt()
        return (x - self.mean) / (std + 1e-7)


class LowRankResidual(nn.Module):
    """x + act(U V x + b) · scale[mode] + shift[mode]; U starts at zero (identity at init)."""

    def __init__(self, dim: int, rank: int, n_modes: int, relu: bool):
        super().__init__()
        rank = min(rank, dim)
        self.v = nn.Parameter(torch.randn(rank, dim) / dim ** 0.5)
        self.u = nn.Parameter(torch.zeros(dim, rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.relu = relu

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        h = x @ self.v.T @ self.u.T + self.bias
        if self.relu:
            h = torch.relu(h)
        return x + h * self.mode_scale[mode] + self.mode_shift[mode]


class GradientTransform(nn.Module):
    """The editor for one weight shape: (u, δ) rows → (ũ, δ̃) rows."""

    def __init__(self, d_in: int, d_out: int, n_modes: int, config: MendConfig):
        super().__init__()
        self.d_in = d_in
        self.norm_u, self.norm_delta = RunningNorm(d_in), RunningNorm(d_out)
        self.normalize = config.normalize
        # Hidden layers take a ReLU, the output layer none (the released IDMLP).
        self.layers = nn.ModuleList(LowRankResidual(d_in + d_out, config.rank, n_modes, relu=i < config.n_hidden)
                                    for i in range(config.n_hidden + 1))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalize:
            u, delta = self.norm_u(u), self.norm_delta(delta)
        h = torch.cat([u, delta], dim=-1)
        for layer in self.layers:
            h = layer(h, mode)
        return h[:, :self.d_in], h[:, self.d_in:]


def shape_key(d_in: int, d_out: int) -> str:
    return f"in{d_in}_out{d_out}"


class MendEditor(nn.Module):
    """Editors for the shapes of `shapes` ({path: (in, out)}, every target of config) and one edit
    rate α per layer. `deltas(factors)` gives the weight change of each layer, in (out, in) layout."""

    def __init__(self, config: MendConfig, shapes: dict[str, tuple[int, int]]):
        super().__init__()
        missing = [t for t in config.targets if t not in shapes]
        if missing:
            raise ConfigError(f"no shape given for edited layer(s) {', '.join(missing)}")
        self.config = config
        self.shapes = {t: tuple(shapes[t]) for t in config.targets}
        self.modes: dict[str, int] = {}  # a layer's index among the layers of its shape
        counts: dict[tuple[int, int], int] = {}
        for target in config.targets:
            shape = self.shapes[target]
            self.modes[target] = counts.get(shape, 0)
            counts[shape] = self.modes[target] + 1
        self.transforms = nn.ModuleDict({shape_key(*shape): GradientTransform(*shape, n, config)
                                         for shape, n in counts.items()})
        self.edit_lrs = nn.Parameter(torch.full((len(config.targets),), float(config.edit_lr)))

    def pseudo_gradient(self, target: str, u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Σ_n δ̃_n ũ_nᵀ for one layer, (out, in)."""
        u_t, delta_t = self.transforms[shape_key(*self.shapes[target])](u, delta, self.modes[target])
        return rank_one_sum(u_t, delta_t)

    def deltas(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """{path: ΔW (out, in)} = −α_ℓ ∇̃W_ℓ (sign "paper") or +α_ℓ ∇̃W_ℓ (sign "code")."""
        sign = -1.0 if self.config.sign == "paper" else 1.0
        out = {}
        for index, target in enumerate(self.config.targets):
            u, delta = factors[target]
            if u.shape[0] == 0:
                raise ConfigError("the edit has no tokens to learn from (every token is padding)")
            out[target] = sign * self.edit_lrs[index] * self.pseudo_gradient(target, u, delta)
        return out


def build_editor(model: nn.Module, targets=None, last_blocks: int = 3, **settings) -> MendEditor:
    """A fresh editor for `targets` (default: the MLP layers of the model's last `last_blocks` blocks);
    settings are MendConfig's (rank, n_hidden, edit_lr, normalize, sign)."""
    targets = tuple(targets) if targets else default_targets(model, last_blocks)
    return MendEditor(MendConfig(targets=targets, **settings), weight_shapes(linear_modules(model, targets)))
