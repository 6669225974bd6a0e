"""A transformer cut into K modules along its stack of blocks, and models put together from modules
of several models (Deep Model Assembling, Ni et al. 2022).

A model of depth D split into K modules: module k owns blocks [start_k, start_k + depth_k) of the
stack; module 0 also owns the embeddings (every embedding module outside the stack), the last module
everything else outside the stack (final norm, pooler, classifier head). Any transformers model with
one stack of blocks in a ModuleList splits this way (BERT-style encoders, ViT, GPT-2-style decoders).

`assemble(sources)` builds a new model whose module k is a copy of module k of `sources[k]`, each source
split into len(sources) equal modules: the hybrid of module incubation is
`assemble([meta] * k + [target] + [meta] * (K - k - 1))`, and assembling K models that are one model
gives that model back. The sources are never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.blocks import layer_stacks
from petkit.core.errors import ConfigError, TargetError
from petkit.models.structure import embedding_modules, hidden_size, replace_stack


@dataclass(frozen=True)
class Split:
    """Where the modules of one model are: `stack` the path of its blocks, `depths` the blocks of each
    module in order, `embeddings` the module paths (outside the stack) that module 0 owns."""

    stack: str
    depths: tuple[int, ...]
    embeddings: tuple[str, ...]

    @property
    def num_modules(self) -> int:
        return len(self.depths)

    def blocks(self, k: int) -> range:
        start = sum(self.depths[:k])
        return range(start, start + self.depths[k])

    def owner(self, key: str) -> int:
        """The module that owns a parameter or buffer (a state-dict key)."""
        if key.startswith(self.stack + "."):
            block = int(key[len(self.stack) + 1:].split(".", 1)[0])
            return next(k for k in range(self.num_modules) if block in self.blocks(k))
        if any(key.startswith(e + ".") for e in self.embeddings):
            return 0
        return self.num_modules - 1

    def relative(self, key: str) -> str:
        """A key as module-local: `blocks.<index inside the module>.<rest>` for a block, unchanged otherwise
        (so a module's tensors fit any model with the same layout, whatever its depth)."""
        if not key.startswith(self.stack + "."):
            return key
        block, rest = key[len(self.stack) + 1:].split(".", 1)
        return f"blocks.{int(block) - self.blocks(self.owner(key)).start}.{rest}"

    def absolute(self, k: int, key: str) -> str:
        """The inverse of `relative` for module k."""
        if not key.startswith("blocks."):
            return key
        block, rest = key[len("blocks."):].split(".", 1)
        return f"{self.stack}.{self.blocks(k).start + int(block)}.{rest}"


def block_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The one stack of blocks of a model (its path and the ModuleList)."""
    stacks = [(n, s) for n, s in layer_stacks(model)]
    if len(stacks) != 1:
        found = ", ".join(n for n, _ in stacks) or "none"
        raise TargetError(f"model assembling splits a model with one stack of blocks; {type(model).__name__} has "
                          f"{len(stacks)} ({found}): use an encoder (BERT-style, ViT) or a decoder-only model")
    return stacks[0]


def split_model(model: nn.Module, num_modules: int | None = None, depths: Sequence[int] | None = None) -> Split:
    """Split `model` into `num_modules` modules of equal depth, or into modules of the given `depths`."""
    name, stack = block_stack(model)
    if depths is None:
        depths = equal_depths(len(stack), num_modules, type(model).__name__)
    depths = tuple(int(d) for d in depths)
    if sum(depths) != len(stack) or min(depths, default=0) < 1:
        raise ConfigError(f"module depths {list(depths)} must be positive and add up to the {len(stack)} blocks "
                          f"of {type(model).__name__}")
    stacks = [(name, stack)]
    return Split(name, depths, tuple(embedding_modules(model, stacks)))


def equal_depths(depth: int, num_modules, what: str = "the model") -> tuple[int, ...]:
    """D/K blocks per module; a clear error when K does not divide D or exceeds it."""
    if not isinstance(num_modules, int) or isinstance(num_modules, bool) or num_modules < 1:
        raise ConfigError(f"the number of modules must be a positive int, got {num_modules!r}")
    if num_modules > depth:
        raise ConfigError(f"{what} has {depth} blocks, too few for {num_modules} modules: use at most {depth} "
                          f"modules, or a deeper model")
    if depth % num_modules:
        divisors = [k for k in range(1, depth + 1) if depth % k == 0]
        raise ConfigError(f"{num_modules} modules do not divide the {depth} blocks of {what} evenly: use one of "
                          f"{divisors}")
    return (depth // num_modules,) * num_modules


def check_compatible(sources: Sequence[nn.Module]) -> None:
    """Modules from these models fit together: same class, same width."""
    kinds = {type(m).__name__ for m in sources}
    if len(kinds) != 1:
        raise ConfigError(f"modules can only be assembled from models of one class, got {sorted(kinds)}")
    widths = [hidden_size(m.config) if getattr(m, "config", None) is not None else None for m in sources]
    if len(set(widths)) != 1:
        raise ConfigError(f"modules must share one width (hidden size) to be assembled, got {widths}: give the "
                          f"meta model the target's hidden size")


def assemble(sources: Sequence[nn.Module]) -> nn.Module:
    """A new model whose module k is a copy of module k of sources[k] (each source split into
    len(sources) equal modules): embeddings from sources[0], head and final norm from sources[-1]."""
    if not sources:
        raise ConfigError("assemble needs at least one source model")
    check_compatible(sources)
    count = len(sources)
    splits = [split_model(m, count) for m in sources]
    model = copy.deepcopy(sources[-1])  # the last module's head, norm and config come with it
    for path in splits[0].embeddings:
        _put(model, path, copy.deepcopy(sources[0].get_submodule(path)))
    blocks = [copy.deepcopy(dict(layer_stacks(src))[split.stack][i])
              for k, (src, split) in enumerate(zip(sources, splits)) for i in split.blocks(k)]
    layers = nn.ModuleList(blocks)
    replace_stack(model, splits[-1].stack, layers)
    for index, block in enumerate(layers):  # cache slots follow the new numbering
        for m in block.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = index
    if getattr(model, "config", None) is not None:
        model.config.num_hidden_layers = len(layers)
    return model


def hybrid(meta: nn.Module, target: nn.Module, k: int, num_modules: int) -> tuple[nn.Module, Split]:
    """Module incubation's model: the meta model's modules with module k taken from the target; and its split."""
    if not isinstance(k, int) or not 0 <= k < num_modules:
        raise ConfigError(f"module index must be in 0..{num_modules - 1}, got {k!r}")
    sources = [target if j == k else meta for j in range(num_modules)]
    model = assemble(sources)
    depths = [split_model(src, num_modules).depths[j] for j, src in enumerate(sources)]
    return model, split_model(model, depths=depths)


def module_state(model: nn.Module, split: Split, k: int) -> dict[str, torch.Tensor]:
    """Module k's tensors under module-local names (see Split.relative), detached copies."""
    return {split.relative(key): t.detach().clone() for key, t in model.state_dict().items() if split.owner(key) == k}


def load_module_state(model: nn.Module, split: Split, k: int, state: dict[str, torch.Tensor]) -> None:
    """Put module k's tensors (from module_state) into model; every name and shape is checked first, so a
    state that does not fit leaves the model as it was."""
    own = {key: t for key, t in model.state_dict().items() if split.owner(key) == k}
    wanted = {split.absolute(k, key): t for key, t in state.items()}
    missing, stray = sorted(set(own) - set(wanted)), sorted(set(wanted) - set(own))
    reshaped = sorted(key for key in set(own) & set(wanted) if own[key].shape != wanted[key].shape)
    if missing or stray or reshaped:
        what = (f"lacks {missing[0]}" if missing else f"has the unknown tensor {stray[0]}" if stray
                else f"gives {reshaped[0]} the shape {tuple(wanted[reshaped[0]].shape)}, the model has "
                     f"{tuple(own[reshaped[0]].shape)}")
        raise ConfigError(f"module {k}'s tensors do not fit this model: the module {what}; load a module saved "
                          f"from a target of the same configuration")
    with torch.no_grad():
        for key, tensor in wanted.items():
            own[key].copy_(tensor)


def _put(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)
