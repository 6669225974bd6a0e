"""Telly-K (Shi et al., ISSTA 2023, arXiv 2304.05216): freeze the embeddings and the bottom K layers.

Static layer freezing: the embedding layer and transformer layers 0..K−1 stay frozen for the whole
run; every other parameter (the top layers, final norm, pooler, task head) trains in place, as in
full fine-tuning (a "selection" method: nothing to merge, the file holds the trained tensors).
K = 0 freezes the embeddings only; K = −1 (the paper's notation) is full fine-tuning.
Trainable count: all parameters − embeddings − the bottom K layers. A tied output head (GPT-2,
Llama, T5 LM heads) is the embedding matrix, so it stays frozen too. Because no parameter before
layer K requires a gradient, autograd records nothing there: the backward pass stops at layer K.

What the layers and the embeddings are, found from the module tree for any model:
- layer stacks: the outermost nn.ModuleLists of identical blocks (BERT `encoder.layer`, GPT-2 `h`,
  Llama and ViT `layers`, T5 `encoder.block` and `decoder.block`);
- embeddings: modules outside the stacks whose class is an embedding (`nn.Embedding`, `*Embedding`,
  `*Embeddings`: BERT/ViT `embeddings` with their norm and position tables, GPT-2 `wte` + `wpe`,
  Llama `embed_tokens`, T5 `shared`).
Encoder-decoder models (T5): "bottom K" applies to each stack, so K freezes encoder blocks 0..K−1
and decoder blocks 0..K−1 (T5's relative position bias lives in block 0 and is frozen with it from
K = 1); K may be at most the depth of the shallower stack. `fraction` sets K = ⌊fraction · depth⌋
per stack. The official training code is not released; this follows the paper and its logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from petkit.core.config import AdapterConfig, check, is_number
from petkit.core.errors import TargetError
from petkit.core.registry import Method, MethodDefaults, register
from petkit.models.structure import embedding_modules, layer_stacks

DEFAULT_FRACTION = 0.5


@dataclass(frozen=True)
class TellyConfig(AdapterConfig):
    """k: layers frozen at the bottom of each layer stack (−1: none, not even the embeddings);
    fraction: or freeze ⌊fraction · depth⌋ of them (default 0.5 when k is not given). Give one."""

    k: int | None = None
    fraction: float | None = None

    def __post_init__(self):
        if self.k is None and self.fraction is None:
            object.__setattr__(self, "fraction", DEFAULT_FRACTION)
        super().__post_init__()

    def validate(self):
        check(not self.targets and not self.exclude,
              "telly chooses what trains itself (all but the embeddings and the bottom k layers); drop targets and exclude")
        check(self.k is None or self.fraction is None, "give k or fraction, not both")
        if self.k is not None:
            check(isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= -1,
                  f"k must be an int >= -1 (-1: full fine-tuning, 0: freeze only the embeddings), got {self.k!r}")
        else:
            check(is_number(self.fraction) and 0 <= self.fraction <= 1, f"fraction must be in [0, 1], got {self.fraction!r}")


def frozen_modules(model: nn.Module, config: TellyConfig) -> list[str]:
    """Paths of the embeddings and of the bottom K layers of every stack."""
    if config.k == -1:
        return []
    stacks = layer_stacks(model)
    if not stacks:
        raise TargetError(f"telly found no stack of transformer layers (an nn.ModuleList of identical blocks) in "
                          f"{type(model).__name__}")
    frozen = embedding_modules(model, stacks)
    for name, stack in stacks:
        k = config.k if config.k is not None else math.floor(config.fraction * len(stack))
        if k > len(stack):
            depths = ", ".join(f"{s}: {len(m)}" for s, m in stacks)
            raise TargetError(f"telly k={k} is larger than the number of layers ({depths}); use k <= {len(stack)}")
        frozen += [f"{name}.{i}" for i in range(k)]
    return frozen


def select_trainable(model: nn.Module, config: TellyConfig) -> list[str]:
    """The fewest module (or parameter) paths that cover every parameter outside the frozen modules."""
    frozen = frozen_modules(model, config)

    def cover(module: nn.Module, path: str) -> list[str]:
        if path in frozen:
            return []
        if not any(path == "" or f.startswith(path + ".") for f in frozen):
            return [path]
        prefix = f"{path}." if path else ""
        paths = [prefix + n for n, _ in module.named_parameters(recurse=False)]
        for n, child in module.named_children():
            paths += cover(child, prefix + n)
        return paths

    return cover(model, "") if frozen else [""]


register(Method(
    name="telly", config=TellyConfig, kind="selection", build=None, layer_types=(), mergeable=False,
    spec="Shi et al., ISSTA 2023 (arXiv 2304.05216)",
    summary="layer freezing: embeddings and the bottom K layers frozen, the rest trains in place",
    select=select_trainable,
    # bench: fraction 0.5: MiniLM freezes embeddings + 3 of 6 layers
    bench=MethodDefaults({}, (3e-5, 1e-4), "selective"),
))
