"""IDPT-style instance-aware prompts (Zha et al., ICCV 2023, arXiv 2304.07221), for text and vision
encoders.

Before the last K blocks (K = 1: the paper's best placement), a generator reads the tokens Y
entering block L − K and emits m prompt tokens for this sample, which are put right after [CLS]
and read by the remaining blocks (then dropped again, so every head and output shape is the
model's own):

    p = W_2 maxpool_tokens(GELU(LN(Y) W_1 + b_1)) + b_2 + e_pos        (m × d)

The paper's generator is a DGCNN over the point-cloud token graph (3 EdgeConv layers, kNN k=20,
global max-pool); this is a lightweight stand-in with the same shape of computation (token-wise
transform, then a global max-pool, so the prompt depends on the whole instance), for token
sequences of any modality. e_pos: the prompts' learnable position embedding (N(0, 0.02²); trained
here, frozen by the official code's name filter, which the specification calls unintended). The
paper's head also reads the prompt and a max-pool of the tokens; here the model's own head reads
its own positions. Padding tokens are left out of the pool.

Encoders only (BERT-style, ViT; see DVPT). Trainable: d·h + h + 2d (LN) + h·m·d + m·d + m·d
(+ the task head). Not identity at init; not mergeable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.config import AdapterConfig, check, is_pos_int
from petkit.core.errors import ConfigError
from petkit.core.model_delta import ModelDelta
from petkit.core.registry import Method, register
from petkit.models.calls import PaddingReader
from petkit.models.structure import encoder_stack, hf_model, hidden_size
from petkit.models.taps import hidden_of, output_hidden, with_hidden, with_output_hidden


@dataclass(frozen=True)
class IdptConfig(AdapterConfig):
    """num_virtual_tokens: m prompts per sample. late_layers: K, the blocks that read them.
    generator_hidden: h of the generator (None: the model's width)."""

    num_virtual_tokens: int = 1
    late_layers: int = 1
    generator_hidden: int | None = None

    def validate(self):
        for name in ("num_virtual_tokens", "late_layers"):
            check(is_pos_int(getattr(self, name)), f"{name} must be a positive integer, got {getattr(self, name)!r}")
        check(self.generator_hidden is None or is_pos_int(self.generator_hidden),
              f"generator_hidden must be a positive integer or null, got {self.generator_hidden!r}")
        check(not self.targets, "IDPT has no targets: its prompts enter before the last blocks")


class IdptDelta(ModelDelta):
    def __init__(self, model: nn.Module, config: IdptConfig, init: bool = True):
        super().__init__()
        object.__setattr__(self, "hf", hf_model(model, "IDPT"))
        stack = encoder_stack(self.hf, "IDPT")
        if config.late_layers > len(stack):
            raise ConfigError(f"late_layers={config.late_layers} is more than the model's {len(stack)} layers")
        object.__setattr__(self, "late", list(stack)[len(stack) - config.late_layers:])
        d = hidden_size(self.hf.config)
        h, self.m = config.generator_hidden or d, config.num_virtual_tokens
        self.norm = nn.LayerNorm(d)
        self.read = nn.Linear(d, h)
        self.emit = nn.Linear(h, self.m * d)
        self.position = nn.Parameter(torch.randn(self.m, d) * 0.02)

    def describe(self) -> str:
        return f"{self.m} instance prompt token(s) generated before the last {len(self.late)} layer(s)"

    def generate_prompts(self, tokens: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        features = nn.functional.gelu(self.read(self.norm(tokens)))
        if padding is not None:
            features = features.masked_fill(padding[..., None], float("-inf"))
        pooled = features.amax(dim=1)
        return self.emit(pooled).view(-1, self.m, tokens.shape[-1]) + self.position

    def attach(self, model: nn.Module) -> None:
        # the base model (BertModel, ViTModel), which every path to the layers goes through
        self.inputs = PaddingReader(self.hook, self.hf.base_model, f"IDPT adapter {self._name!r}")
        self.hook(self.late[0], pre=True, fn=self._insert)
        for layer in self.late[1:]:
            self.hook(layer, pre=True, fn=self._widen_mask)
        self.hook(self.late[-1], pre=False, fn=self._drop)

    def _insert(self, module, args, kwargs):
        tokens = hidden_of(args, kwargs)
        prompts = self.generate_prompts(tokens, self.inputs.padding).to(tokens.dtype)
        tokens = torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], dim=1)
        args, kwargs = self._widen_mask(module, args, kwargs)
        return with_hidden(args, kwargs, tokens)

    def _widen_mask(self, module, args, kwargs):
        """The layer's (batch, 1, query, key) mask gets the m prompt rows and columns, allowed."""
        position = 1 if len(args) > 1 else None
        mask = args[1] if position else kwargs.get("attention_mask")
        if mask is None:
            return args, kwargs
        fill = True if mask.dtype == torch.bool else 0.0
        mask = torch.cat([mask[..., :1], _fill(mask, self.m, -1, fill), mask[..., 1:]], dim=-1)
        if mask.shape[-2] > 1:
            mask = torch.cat([mask[..., :1, :], _fill(mask, self.m, -2, fill), mask[..., 1:, :]], dim=-2)
        if position:
            return (args[0], mask, *args[2:]), kwargs
        return args, {**kwargs, "attention_mask": mask}

    def _drop(self, module, args, kwargs, out):
        hidden = output_hidden(out)
        hidden = torch.cat([hidden[:, :1], hidden[:, 1 + self.m:]], dim=1)
        return with_output_hidden(out, hidden)


def _fill(mask: torch.Tensor, m: int, dim: int, value) -> torch.Tensor:
    shape = list(mask.shape)
    shape[dim] = m
    return torch.full(shape, value, dtype=mask.dtype, device=mask.device)


register(Method(
    name="idpt", config=IdptConfig, kind="model", build=IdptDelta, layer_types=(), mergeable=False,
    spec="Zha et al., ICCV 2023 (arXiv 2304.07221); lightweight token-MLP + max-pool generator instead of DGCNN",
    summary="instance-aware prompts: a generator reads each sample's tokens and inserts prompts before the last blocks",
))
