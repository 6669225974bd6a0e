"""DSEE (Chen et al., ACL 2023, arXiv 2111.00160): a low-rank plus a sparse update, then sparse weights.

Stage 1: ΔW = s·B A + s·scatter(S), s = alpha / r, on the query and value projections by default.
The low-rank part is a `LoraDelta` (A ~ N(0, 0.02) and B = 0, as in the official code); the sparse
part is a `SparseDelta` with `nnz` trainable entries per matrix, starting at 0, so the model starts
exactly at the base. Trainable per matrix: r·(d_in + d_out) + nnz. Mergeable exactly.

Where the nnz entries go (`support`):
- "grebsmo" (default, as the official scripts): decompose the pre-trained weight W ≈ U V + S
  (GreBsmo: QR-based bilateral low-rank sketch, the residual hard-thresholded at
  `grebsmo_threshold` into S, the rank grown by 5 per outer step) and take the top-nnz |S|: the
  update sits where W has its largest entries that a low-rank model does not explain. The official
  code grows the rank for 100 outer steps whatever the shape; petkit stops at `grebsmo_rank`
  (default 100, at most half the smaller side of W), because at full rank U V = W and S is empty.
- "omp": the top-nnz |W| (one-shot magnitude); "random": uniform positions (the code's `rp`).
Both decomposition and random choice are seeded (`seed`).

Stage 2 (`prune(am, ...)`): sparse final weights, M ⊙ W + ΔW.
- mode="unstructured": prune a global fraction `sparsity` of the entries of all DSEE-adapted
  weights, scored by |ΔW| ("delta", the paper's ABS, its choice for q and v), |W| ("weight", its
  choice for the other matrices) or |W| + |ΔW| ("weight+delta", WABS).
- mode="heads": per attention block, remove the `heads` least important heads, importance
  Σ_{rows of the head} |ΔW| (+|W|) over the adapted q/v matrices of the block: their rows of W and
  b are zeroed and their rows of ΔW masked, so the head's value output is exactly zero (the
  official code slices the heads out with `prune_heads`; same function when v is adapted).
Pruning writes the zeros into the base weights in place (this *is* the stage-2 model; use
`adapt(model, cfg, copy=True)` to keep the original), and the mask is saved with the adapter, so
loading the file onto the original base prunes it again. Only DSEE-adapted matrices are pruned
(the paper also prunes the key/output/FFN weights by |W|: adapt them with DSEE to include them).

Merge caveat: the pruning mask applies to W, not to W + ΔW, and ΔW is dense, so merging ΔW into
an unstructured-pruned W densifies it and the inference sparsity is lost. petkit therefore refuses
to merge an unstructured-pruned DSEE adapter (StateError; keep it unmerged: sparse W + low-rank +
sparse path), and refuses to prune a merged one (the mask would cut ΔW too and unmerge would be
wrong). Head pruning masks ΔW's rows too, so a head-pruned adapter merges exactly and stays sparse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.config import AdapterConfig, check, is_number, is_pos_int
from petkit.core.errors import ConfigError, StateError
from petkit.core.layer import Delta, add_to_weight, in_out_features, weight_oi
from petkit.core.module_types import LINEAR_TYPES
from petkit.core.registry import Method, MethodDefaults, register
from petkit.methods.lora import LoraDelta
from petkit.kernels.sparse import SparseDelta

SUPPORTS = ("grebsmo", "omp", "random")
PRUNED = ("", "unstructured", "heads")
SCORES = ("delta", "weight", "weight+delta")


@dataclass(frozen=True)
class DseeConfig(AdapterConfig):
    """targets default to the attention query and value projections ("attn.q", "attn.v"; the fused
    qkv layer on models that fuse them);
    r, alpha, dropout: the low-rank part (scale alpha / r, also applied to the sparse part);
    nnz: sparse entries per matrix, a count (int) or a fraction of the matrix (float in (0, 1));
    support: "grebsmo", "omp" or "random"; seed: for the random parts of the support choice;
    grebsmo_rank / grebsmo_threshold: final rank and hard threshold of the decomposition;
    pruned: set by `dsee.prune` ("unstructured" or "heads"), not by hand."""

    r: int = 16
    alpha: float = 32
    dropout: float = 0.0
    nnz: int | float = 16
    support: str = "grebsmo"
    seed: int = 0
    grebsmo_rank: int = 100
    grebsmo_threshold: float = 0.01
    pruned: str = ""

    def validate(self):
        check(is_pos_int(self.r), f"r must be a positive int, got {self.r!r}")
        check(is_number(self.alpha) and 0 < self.alpha < math.inf, f"alpha must be a positive number, got {self.alpha!r}")
        check(is_number(self.dropout) and 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")
        check(is_pos_int(self.nnz) or (isinstance(self.nnz, float) and 0 < self.nnz < 1),
              f"nnz must be a positive int (entries per matrix) or a fraction in (0, 1), got {self.nnz!r}")
        check(self.support in SUPPORTS, f"support must be one of {', '.join(SUPPORTS)}, got {self.support!r}")
        check(isinstance(self.seed, int) and not isinstance(self.seed, bool), f"seed must be an int, got {self.seed!r}")
        check(is_pos_int(self.grebsmo_rank), f"grebsmo_rank must be a positive int, got {self.grebsmo_rank!r}")
        check(is_number(self.grebsmo_threshold) and self.grebsmo_threshold >= 0,
              f"grebsmo_threshold must be a number >= 0, got {self.grebsmo_threshold!r}")
        check(self.pruned in PRUNED, f"pruned must be '', 'unstructured' or 'heads' (set by dsee.prune), got {self.pruned!r}")


# -- where the sparse entries go -------------------------------------------------------------------

@torch.no_grad()
def grebsmo(W: torch.Tensor, rank: int, threshold: float, step: int = 5, inner: int = 2,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GreBsmo-style W ≈ L + S (L of rank <= `rank`, S hard-thresholded at `threshold`); returns (L, S).

    As in the official DSEE code: start from a random rank-1 row space V; per outer step, S restarts
    at 0 and `inner` rounds of U = QR((W − S) Vᵀ).Q, V = Uᵀ (W − S), S = hard(W − U V) refine it;
    then V grows by `step` rows taken from the R factor of the residual's QR.
    """
    W = W.detach().float()
    V = torch.randn(1, W.shape[1], generator=generator)
    while True:
        S = torch.zeros_like(W)
        for _ in range(inner):
            U = torch.linalg.qr((W - S) @ V.t()).Q
            V = U.t() @ (W - S)
            S = W - U @ V
            S[S.abs() < threshold] = 0
        if V.shape[0] >= rank:
            return U @ V, S
        grow = min(step, rank - V.shape[0])
        V = torch.cat([V, torch.linalg.qr(W - U @ V - S).R[:grow]])


def choose_support(W: torch.Tensor, count: int, support: str, seed: int, rank: int, threshold: float) -> torch.Tensor:
    """Flat (out, in) positions of the `count` sparse entries."""
    generator = torch.Generator().manual_seed(seed)
    if support == "random":
        return torch.randperm(W.numel(), generator=generator)[:count]
    if support == "omp":
        score = W.detach().float().abs()
    else:
        score = grebsmo(W, min(rank, max(1, min(W.shape) // 2)), threshold, generator=generator)[1].abs()
    return torch.topk(score.reshape(-1), count).indices


class DseeDelta(Delta):
    fused = True

    def __init__(self, base: nn.Module, config: DseeConfig, init: bool):
        super().__init__()
        in_f, out_f = in_out_features(base)
        count = config.nnz if isinstance(config.nnz, int) else max(1, round(config.nnz * in_f * out_f))
        if count > in_f * out_f:
            raise ValueError(f"nnz={count} is more than the {in_f * out_f} entries of the weight")
        scale = config.alpha / config.r
        self.lora = LoraDelta(base, config.r, scale, config.dropout, init=None)
        if init:
            index = choose_support(weight_oi(base), count, config.support, config.seed,
                                   config.grebsmo_rank, config.grebsmo_threshold)
            nn.init.normal_(self.lora.A, std=0.02)
            nn.init.zeros_(self.lora.B)
        else:  # loading: the file's support is copied in
            index = torch.arange(count)
        self.sparse = SparseDelta(base, index, scale)
        self.pruned = config.pruned
        if self.pruned:
            self.register_buffer("keep", torch.ones((out_f, in_f) if self.pruned == "unstructured" else out_f, dtype=torch.bool))
        object.__setattr__(self, "_base", base)  # not a submodule: loaded() re-applies the mask to it

    def _rows(self, y):
        return y * self.keep if self.pruned == "heads" else y

    def fused_forward(self, base, x):
        return self._rows(self.sparse.fused_forward(base, x) + self.lora._low_rank(base, x))

    def forward(self, base, x, y):
        return y + self._rows(self.lora._low_rank(base, x) + self.sparse.product(base, x))

    def delta_weight(self, base):
        dw = self.lora.delta_weight(base) + self.sparse.delta_weight(base)
        return dw * self.keep[:, None] if self.pruned == "heads" else dw

    def merge(self, base):
        if self.pruned == "unstructured":
            raise StateError("a DSEE adapter pruned with mode='unstructured' cannot be merged: the mask applies to the "
                             "base weights and ΔW is dense, so merging would densify the pruned weights; keep it "
                             "unmerged (or prune with mode='heads', which merges exactly)")
        add_to_weight(base, self.delta_weight(base).detach())

    def unmerge(self, base):
        add_to_weight(base, self.delta_weight(base).detach(), sign=-1.0)

    @torch.no_grad()
    def apply_mask(self, base: nn.Module) -> None:
        """Zero the pruned entries (unstructured) or rows and bias (heads) of the base layer in place."""
        W = weight_oi(base)
        if self.pruned == "unstructured":
            W.mul_(self.keep)
        elif self.pruned == "heads":
            W.mul_(self.keep[:, None])
            if base.bias is not None:
                base.bias.mul_(self.keep)

    def loaded(self):
        self.sparse.loaded()
        self.apply_mask(self._base)


def build_dsee(base, config: DseeConfig, path: str, model, init: bool = True) -> DseeDelta:
    return DseeDelta(base, config, init)


register(Method(
    name="dsee", config=DseeConfig, kind="weight", build=build_dsee, layer_types=LINEAR_TYPES, mergeable=True,
    spec="Chen et al., ACL 2023 (arXiv 2111.00160); code VITA-Group/DSEE",
    summary="low-rank + sparse update (support from a low-rank+sparse decomposition of W); optional pruning",
    default_targets=("attn.q", "attn.v"),
    bench=MethodDefaults({"r": 8, "alpha": 16, "nnz": 16, "targets": ["attn.q", "attn.v"]}, (1e-3, 5e-3), "sparse"),
))


# -- stage 2: pruning ------------------------------------------------------------------------------

def prune(am, name: str = "default", sparsity: float = 0.2, *, mode: str = "unstructured",
          score: str = "delta", heads: int | None = None) -> dict[str, float]:
    """Prune the base weights under DSEE adapter `name` (see the module docstring); returns, per
    module path, the fraction of its weight entries now zero. Continue training afterwards as usual."""
    config = am.adapter_config(name)
    if not isinstance(config, DseeConfig):
        raise ConfigError(f"adapter {name!r} is a {type(config).method} adapter; dsee.prune needs a DSEE one")
    check(mode in PRUNED[1:], f"mode must be 'unstructured' or 'heads', got {mode!r}")
    check(score in SCORES, f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if config.pruned:
        raise StateError(f"adapter {name!r} is already pruned ({config.pruned})")
    if am.state.merged:
        raise StateError(f"adapters {am.state.merged} are merged into the weights; unmerge() before pruning "
                         "(the mask must apply to W, not to W + ΔW)")
    layers = [(p, layer.base_layer, d) for p, layer, d in am.layers(name) if isinstance(d, DseeDelta)]
    with torch.no_grad():
        scores = {p: _score(base, d, score) for p, base, d in layers}
    if mode == "unstructured":
        check(is_number(sparsity) and 0 < sparsity < 1, f"sparsity must be a fraction in (0, 1), got {sparsity!r}")
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        k = round(sparsity * flat.numel())
        cut = torch.zeros(flat.numel(), dtype=torch.bool)
        cut[torch.topk(flat, k, largest=False).indices] = True  # exactly k entries, ties broken by topk
        keeps, start = {}, 0
        for p, s in scores.items():
            keeps[p] = ~cut[start:start + s.numel()].view(s.shape)
            start += s.numel()
    else:
        keeps = _head_keeps(am.base, scores, heads)
    for p, base, d in layers:
        d.pruned = mode
        d.register_buffer("keep", keeps[p].to(weight_oi(base).device))
        d.apply_mask(base)
    am.state.configs[name] = config.replace(pruned=mode)  # so a saved file rebuilds the mask buffers
    return {p: float((weight_oi(base) == 0).float().mean()) for p, base, _ in layers}


def _score(base, delta: DseeDelta, score: str) -> torch.Tensor:
    parts = []
    if score != "weight":
        parts.append(delta.delta_weight(base).abs())
    if score != "delta":
        parts.append(weight_oi(base).detach().float().abs())
    return sum(parts)


def _head_keeps(model, scores: dict, heads) -> dict[str, torch.Tensor]:
    check(is_pos_int(heads), f"mode='heads' needs heads = the number of heads to prune per attention block, got {heads!r}")
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or getattr(cfg, "d_kv", None) or cfg.hidden_size // cfg.num_attention_heads
    blocks: dict[str, list[str]] = {}
    for p in scores:
        blocks.setdefault(p.rsplit(".", 1)[0], []).append(p)
    keeps = {}
    for block, paths in blocks.items():
        rows = {scores[p].shape[0] for p in paths}
        if len(rows) != 1 or next(iter(rows)) % head_dim:
            raise ConfigError(f"head pruning needs the adapted matrices of {block} to have the same number of "
                              f"{head_dim}-row heads (fused qkv or grouped-query attention is not supported)")
        n_heads = next(iter(rows)) // head_dim
        if heads >= n_heads:
            raise ConfigError(f"cannot prune {heads} of the {n_heads} heads of {block}")
        importance = sum(scores[p].sum(1).view(n_heads, head_dim).sum(1) for p in paths)
        keep_head = torch.ones(n_heads, dtype=torch.bool)
        keep_head[torch.topk(importance, heads, largest=False).indices] = False
        for p in paths:
            keeps[p] = keep_head.repeat_interleave(head_dim)
    return keeps
