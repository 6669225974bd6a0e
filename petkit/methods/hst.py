"""HST: hierarchical side-tuning (Lin et al., arXiv 2310.05393; official code AFeng-x/HST) on ViT.

A small multi-scale side network reads the image and, block by block, the frozen ViT:

- Meta tokens: one learnable token m_l per ViT layer (xavier-uniform), put in front of layer l's
  input and taken out of its output, m_l^out (VPT-deep with one token: gradients do flow through
  the ViT; HST saves parameters, not memory).
- Side network: S stages of widths dims[i] with `blocks` = L / S blocks each. Stage 1 starts from
  the image with a conv stem (3×3 stride 2 + BatchNorm + ReLU + 2×2 stride 2: 1/4 resolution),
  later stages halve it with a 3×3 stride-2 conv + LayerNorm. Side block j of stage i reads ViT
  layer l = i·blocks + j through the stage's bridge B_i (Linear d → dims[i]):

      F   = B_i(bilinear(patch tokens of layer l → the stage's H_i × W_i))
      m   = LN_l(B_i(m_l^out))
      x  += CrossAttn(q = LN(x), kv = [m ; mean_tokens(F)])      two key/value tokens
      x  += F                                                    the ladder
      x  += MLP(LN(x))                                           ratio 4, GELU

  (B_i is applied before the interpolation: both are linear, so the result is the same, and the
  interpolation then runs at dims[i] instead of d.)
- Head: mean over the last stage's tokens → BatchNorm1d(affine=False) → Linear → the logits that
  replace the ViT head's (the loss is recomputed from them by the model's rule).

Trainable: meta tokens, stem, downsamplers, bridges, side blocks, head. The official code also
trains the ViT's block LayerNorms; here they stay frozen (add a `layernorm` adapter beside it for
that). Not identity at init; not mergeable. ViT-style image classifiers only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from petkit.core.config import AdapterConfig, check, is_pos_int
from petkit.core.errors import ConfigError, StateError, TargetError
from petkit.core.model_delta import ModelDelta
from petkit.core.registry import Method, register
from petkit.models.calls import call_inputs
from petkit.models.heads import with_logits
from petkit.models.structure import hf_model, is_vision, layer_stacks
from petkit.models.taps import hidden_of, output_hidden, with_hidden, with_output_hidden


@dataclass(frozen=True)
class HstConfig(AdapterConfig):
    """dims / heads: per stage width and cross-attention heads (the paper's ViT-B/16 setting by
    default: 4 stages, L / 4 blocks each)."""

    dims: tuple[int, ...] = (32, 48, 64, 72)
    heads: tuple[int, ...] = (2, 4, 8, 12)
    train_head: Any = False  # the ViT's own head is not read: HST has its own

    def __post_init__(self):
        for name in ("dims", "heads"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        super().__post_init__()

    def validate(self):
        check(isinstance(self.dims, tuple) and len(self.dims) > 0 and all(is_pos_int(d) for d in self.dims),
              f"dims must be a list of positive stage widths, got {self.dims!r}")
        check(isinstance(self.heads, tuple) and len(self.heads) == len(self.dims) and all(
            is_pos_int(h) and d % h == 0 for d, h in zip(self.dims, self.heads)),
            f"heads must give one head count per stage that divides its width, got heads={self.heads!r} for "
            f"dims={self.dims!r}")
        check(not self.targets, "HST has no targets: it reads every ViT layer")


class SideBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.meta_norm, self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attend = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, feature: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        kv = torch.cat([self.meta_norm(meta)[:, None], feature.mean(dim=1, keepdim=True)], dim=1)
        query = self.norm1(x)
        x = x + self.attend(query, kv, kv, need_weights=False)[0]
        x = x + feature
        return x + self.mlp(self.norm2(x))


class Downsample(nn.Module):
    """Stride-2 3×3 conv between stages, then LayerNorm over channels (OverlapPatchEmbed)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(n_out)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        out = self.conv(grid)
        return self.norm(out.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class HstDelta(ModelDelta):
    def __init__(self, model: nn.Module, config: HstConfig, init: bool = True):
        super().__init__()
        object.__setattr__(self, "hf", hf_model(model, "HST"))
        cfg = self.hf.config
        stacks = layer_stacks(self.hf)
        if not is_vision(cfg) or len(stacks) != 1 or not isinstance(getattr(cfg, "num_labels", None), int):
            raise TargetError(f"HST is a side network for ViT-style image classifiers; {type(self.hf).__name__} is not "
                              "one: for text models use LST or SHERL")
        object.__setattr__(self, "layers", list(stacks[0][1]))
        stages = len(config.dims)
        if len(self.layers) % stages:
            fits = [s for s in range(1, len(self.layers) + 1) if len(self.layers) % s == 0]
            raise ConfigError(f"HST's {stages} stages cannot share the ViT's {len(self.layers)} layers evenly; give dims "
                              f"and heads {fits} entries")
        self.per_stage = len(self.layers) // stages
        self.grid = cfg.image_size // cfg.patch_size
        d, dims = cfg.hidden_size, config.dims
        self.meta = nn.Parameter(torch.zeros(len(self.layers), d))
        nn.init.xavier_uniform_(self.meta)
        self.stem = nn.Sequential(nn.Conv2d(cfg.num_channels, dims[0], 3, stride=2, padding=1), nn.BatchNorm2d(dims[0]),
                                  nn.ReLU(), nn.Conv2d(dims[0], dims[0], 2, stride=2))
        self.downs = nn.ModuleList(Downsample(a, b) for a, b in zip(dims, dims[1:]))
        self.bridges = nn.ModuleList(nn.Linear(d, dim) for dim in dims)
        self.blocks = nn.ModuleList(SideBlock(dims[i], config.heads[i])
                                    for i in range(stages) for _ in range(self.per_stage))
        self.head = nn.Sequential(nn.BatchNorm1d(dims[-1], affine=False), nn.Linear(dims[-1], cfg.num_labels))

    def describe(self) -> str:
        return (f"hierarchical side network, {len(self.bridges)} stages x {self.per_stage} blocks, "
                f"meta tokens in {len(self.layers)} ViT layers")

    def attach(self, model: nn.Module) -> None:
        self._signature = inspect.signature(self.hf.forward)
        self._calls = self.hook_call(self.hf, self._read_call, self._run_side)
        for index, layer in enumerate(self.layers):
            self.hook(layer, pre=True, fn=self._insert_meta(index))
            self.hook(layer, pre=False, fn=self._collect(index))

    def _read_call(self, module, args, kwargs, frame):
        frame["inputs"] = call_inputs(self._signature, args, kwargs, f"HST adapter {self._name!r}")
        frame["taps"] = {}  # layer -> (meta token out, patch tokens out)

    def _insert_meta(self, index: int):
        def insert(module, args, kwargs):
            hidden = hidden_of(args, kwargs)
            hidden = torch.cat([self.meta[index].to(hidden.dtype).expand(hidden.shape[0], 1, -1), hidden], dim=1)
            return with_hidden(args, kwargs, hidden)
        return insert

    def _collect(self, index: int):
        def collect(module, args, kwargs, out):
            hidden = output_hidden(out)
            self._calls.top["taps"][index] = (hidden[:, 0], hidden[:, 2:])  # meta out; patch tokens (after [CLS])
            hidden = hidden[:, 1:]
            return with_output_hidden(out, hidden)
        return collect

    def side_logits(self, pixels: torch.Tensor, taps: dict) -> torch.Tensor:
        """The side network's logits from the images and what each ViT layer gave out (`taps`)."""
        x = self.stem(pixels.to(self.meta.dtype))
        for stage, bridge in enumerate(self.bridges):
            if stage:
                x = self.downs[stage - 1](x)
            height, width = x.shape[-2:]
            tokens = x.flatten(2).transpose(1, 2)
            for j in range(self.per_stage):
                layer = stage * self.per_stage + j
                meta, patches = taps[layer]
                grid = bridge(patches).transpose(1, 2).reshape(len(pixels), -1, self.grid, self.grid)
                feature = nn.functional.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
                tokens = self.blocks[layer](tokens, feature.flatten(2).transpose(1, 2), bridge(meta))
            x = tokens.transpose(1, 2).reshape(len(pixels), -1, height, width)
        return self.head(tokens.mean(dim=1))

    def _run_side(self, module, args, kwargs, out, frame):
        inputs = frame["inputs"]
        pixels = inputs.get("pixel_values")
        if pixels is None:
            raise StateError(f"HST adapter {self._name!r} needs pixel_values")
        logits = self.side_logits(pixels, frame["taps"])
        return with_logits(out, logits, inputs.get("labels"), self.hf.config)


register(Method(
    name="hst", config=HstConfig, kind="model", build=HstDelta, layer_types=(), mergeable=False,
    spec="Lin et al. 2023 (arXiv 2310.05393); official code AFeng-x/HST",
    summary="hierarchical side network with meta tokens and bridges from a frozen ViT (its own head)",
))
