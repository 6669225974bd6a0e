"""Matrix cases of Telly: embeddings and the bottom K layers frozen, the rest trained in place."""

from __future__ import annotations

import math

from petkit.methods import telly
from petkit.models.structure import embedding_modules, layer_stacks

# Written out per tiny family (not discovered as the method does): the embeddings and the layer stacks.
# Any other architecture reads them from the engine's structure helpers, which test_structure_matches_the_table
# checks against these tables.
EMBEDDINGS = {"BertForSequenceClassification": ["bert.embeddings"], "GPT2LMHeadModel": ["transformer.wte", "transformer.wpe"],
              "LlamaForCausalLM": ["model.embed_tokens"], "T5ForConditionalGeneration": ["shared"],
              "ViTForImageClassification": ["vit.embeddings"]}
STACKS = {"BertForSequenceClassification": ["bert.encoder.layer"], "GPT2LMHeadModel": ["transformer.h"],
          "LlamaForCausalLM": ["model.layers"], "T5ForConditionalGeneration": ["encoder.block", "decoder.block"],
          "ViTForImageClassification": ["vit.layers", "vit.encoder.layer"]}  # transformers 5 / 4 names


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def parts(model) -> tuple[list[str], list[str]]:
    """(embedding paths, layer stack paths) of a model: the tables above, else the engine's structure."""
    kind = type(model).__name__
    if kind in EMBEDDINGS:
        return EMBEDDINGS[kind], STACKS[kind]
    stacks = layer_stacks(model)
    return embedding_modules(model, stacks), [name for name, _ in stacks]


def telly_count(am, name):
    cfg, model = am.adapter_config(name), am.base
    total = _numel(model)  # parameters() counts a tied head once
    if cfg.k == -1:
        return total
    embeddings, stacks = parts(model)
    frozen = [model.get_submodule(e) for e in embeddings]
    for path in stacks:
        try:
            stack = model.get_submodule(path)
        except AttributeError:
            continue
        k = cfg.k if cfg.k is not None else math.floor(cfg.fraction * len(stack))
        frozen += [stack[i] for i in range(k)]
    unique = {id(p): p.numel() for module in frozen for p in module.parameters()}  # T5's tied tables once
    return total - sum(unique.values())


CASES = {
    "telly": lambda fam: telly.TellyConfig(k=1),
    "telly-embeddings-only": lambda fam: telly.TellyConfig(k=0),
    "telly-all-layers": lambda fam: telly.TellyConfig(fraction=1.0),
}
FORMULAS = {"telly": telly_count}
