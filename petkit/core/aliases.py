"""State-dict keys that name a tensor another key already names (tied embeddings, a module at two paths).

`nn.Module.state_dict()` lists a shared tensor once per path; safetensors refuses to write such a dict
("Some tensors share memory"), which is what `transformers.Trainer` does with any model it does not
know. AdaptedModel leaves these aliases out of its state dict and fills them back in when one is
loaded, as transformers' own `save_pretrained` / `from_pretrained` do for tied weights.
"""

from __future__ import annotations

from torch import nn


def alias_keys(module: nn.Module) -> dict[str, str]:
    """{alias key: the first key naming the same tensor}, keys relative to `module`."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    named = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    for key, tensor in named:
        if id(tensor) in first:
            aliases[key] = first[id(tensor)]
        else:
            first[id(tensor)] = key
    return aliases
