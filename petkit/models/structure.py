"""What a transformers model is made of, found from its module tree and config, for any family:
the Hugging Face model inside a wrapper, its stacks of transformer layers, its embeddings, its
attention shape and its position limit. Methods that act on the whole model (prompts, prefixes,
layer freezing, side networks) read the model through these instead of per-family tables.
"""

from __future__ import annotations

from torch import nn

from petkit.core.blocks import layer_stacks  # noqa: F401  (methods read stacks from here)
from petkit.core.errors import TargetError
from petkit.core.unwrapped import named_base_modules


def hf_model(model: nn.Module, method: str) -> nn.Module:
    """The outermost transformers PreTrainedModel in model (the model itself, or inside a wrapper)."""
    from transformers import PreTrainedModel
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module
    raise TargetError(f"{method} needs a Hugging Face transformers model; {type(model).__name__} holds none")


def embedding_modules(model: nn.Module, stacks) -> list[str]:
    """Outermost embedding modules outside the layer stacks."""
    found: list[str] = []
    for name, m in named_base_modules(model):
        if any(name == s or name.startswith(s + ".") for s in [s for s, _ in stacks] + found):
            continue
        if type(m).__name__.endswith(("Embedding", "Embeddings")):
            found.append(name)
    return found


def _first(config, *names):
    return next((getattr(config, n) for n in names if isinstance(getattr(config, n, None), int)), None)


def hidden_size(config) -> int | None:
    return _first(config, "hidden_size", "n_embd", "d_model")


def attention_shape(config) -> tuple[int, int]:
    """(key/value heads, head dim) of the model's self-attention, grouped-query attention included."""
    heads = _first(config, "num_attention_heads", "n_head", "num_heads")
    width = hidden_size(config)
    if heads is None or width is None:
        raise TargetError(f"{type(config).__name__} names no attention heads or hidden size")
    kv_heads = _first(config, "num_key_value_heads") or heads
    head_dim = _first(config, "head_dim", "d_kv") or width // heads
    return kv_heads, head_dim


def max_positions(config) -> int | None:
    """How many positions the model can read, or None (relative positions such as T5's: no fixed limit)."""
    if getattr(config, "position_embedding_type", "absolute") != "absolute" or getattr(config, "is_encoder_decoder", False):
        return None
    return _first(config, "max_position_embeddings", "n_positions")


def is_vision(config) -> bool:
    """An image model (ViT-style: image_size, no vocabulary)."""
    return getattr(config, "image_size", None) is not None and not hasattr(config, "vocab_size")


def vpt_bound(config, width: int) -> float:
    """VPT's prompt init bound √(6 / (3·patch² + d)): the xavier-uniform bound of a patch projection."""
    patch = config.patch_size
    return (6.0 / (3 * patch * patch + width)) ** 0.5


def is_causal(hf: nn.Module) -> bool:
    """Whether the model's self-attention is causal: its attention modules say so, its config does
    (BERT as a decoder), or its family is decoder-only in transformers' auto classes (BLOOM's and
    MPT's attention modules carry no is_causal flag)."""
    from petkit.models.attention import self_attention_modules
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = hf.config
    if getattr(config, "is_decoder", False):
        return True
    if any(getattr(a, "is_causal", False) for _, stack in layer_stacks(hf) for a in self_attention_modules(stack[0])):
        return True
    family = getattr(config, "model_type", None)
    return (family in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and family not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            and not getattr(config, "is_encoder_decoder", False))


def own_layers(hf: nn.Module, stack: nn.ModuleList, method: str) -> nn.ModuleList:
    """The stack, if each of its modules is one layer: ALBERT runs one shared layer module for all of
    its layers, so a method that puts something before, after or beside layer i cannot."""
    layers = getattr(hf.config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers > len(stack):
        raise TargetError(f"{method} works on each layer of a model, but {type(hf).__name__} shares its layers (it runs "
                          f"{len(stack)} layer module(s) {layers} times): use LoRA, IA3, prompt or prefix tuning here")
    return stack


def encoder_stack(hf: nn.Module, method: str) -> nn.ModuleList:
    """The one stack of bidirectional layers of an encoder (BERT-style, ViT), for methods that read a
    whole sequence at once; causal and encoder-decoder models get a clear error."""
    stacks = layer_stacks(hf)
    if len(stacks) != 1:
        raise TargetError(f"{method} needs one stack of encoder layers; {type(hf).__name__} has {len(stacks)} "
                          f"({', '.join(n for n, _ in stacks)}): use it on encoders (BERT-style, ViT)")
    if is_causal(hf):
        raise TargetError(f"{method} reads the whole sequence at once, which in a causal model "
                          f"({type(hf).__name__}) would let a position see later tokens: use it on encoders "
                          "(BERT-style, ViT), or prefix/LoRA on decoders")
    return stacks[0][1]


def replace_stack(hf: nn.Module, name: str, layers) -> nn.ModuleList:
    """Put `layers` (a ModuleList) where the layer stack `name` (a path from layer_stacks) is; returns
    the stack that was there."""
    parent_name, _, attr = name.rpartition(".")
    parent = hf.get_submodule(parent_name) if parent_name else hf
    old = getattr(parent, attr)
    setattr(parent, attr, layers if isinstance(layers, nn.ModuleList) else nn.ModuleList(layers))
    return old


def truncated(model: nn.Module, keep) -> nn.Module:
    """A copy of a one-stack model (decoders, encoders) that keeps only the layers at the indices in
    keep, in order: the layer-dropped small model used to start a distillation (the original is left
    as it was). Cache slots (``layer_idx``) and the config's layer count follow the new numbering."""
    import copy

    hf = hf_model(model, "truncation")
    stacks = layer_stacks(hf)
    if len(stacks) != 1:
        raise TargetError(f"truncation needs a model with one stack of layers; {type(hf).__name__} has "
                          f"{len(stacks)} ({', '.join(n for n, _ in stacks)})")
    name, stack = stacks[0]
    keep = list(keep)
    if not keep or any(not isinstance(i, int) or isinstance(i, bool) for i in keep):
        raise TargetError(f"keep must be a non-empty list of layer indices, got {keep!r}")
    if sorted(set(keep)) != keep or not 0 <= keep[0] <= keep[-1] < len(stack):
        raise TargetError(f"keep must be increasing, distinct layer indices in 0..{len(stack) - 1} "
                          f"({name} has {len(stack)} layers), got {keep}")
    small = copy.deepcopy(model)
    small_hf = hf_model(small, "truncation")
    copied = dict(layer_stacks(small_hf))[name]
    kept = nn.ModuleList(copied[i] for i in keep)
    replace_stack(small_hf, name, kept)
    for new_index, layer in enumerate(kept):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new_index
    config = small_hf.config
    config.num_hidden_layers = len(keep)  # GPT-2's n_layer is an alias of it
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    return small
