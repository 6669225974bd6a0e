"""Matrix cases of Telly: embeddings and the bottom K layers frozen, the rest trained in place."""

from __future__ import annotations

import math

from petkit.methods import telly

# Written out per tiny family (not discovered as the method does): the embeddings and the layer stacks.
EMBEDDINGS = {"BertForSequenceClassification": ["bert.embeddings"], "GPT2LMHeadModel": ["transformer.wte", "transformer.wpe"],
              "LlamaForCausalLM": ["model.embed_tokens"], "T5ForConditionalGeneration": ["shared"],
              "ViTForImageClassification": ["vit.embeddings"]}
STACKS = {"BertForSequenceClassification": ["bert.encoder.layer"], "GPT2LMHeadModel": ["transformer.h"],
          "LlamaForCausalLM": ["model.layers"], "T5ForConditionalGeneration": ["encoder.block", "decoder.block"],
          "ViTForImageClassification": ["vit.layers", "vit.encoder.layer"]}  # transformers 5 / 4 names


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def telly_count(am, name):
    cfg, model = am.config(name), am.base
    total = _numel(model)  # parameters() counts a tied head once
    if cfg.k == -1:
        return total
    kind = type(model).__name__
    frozen = sum(_numel(model.get_submodule(e)) for e in EMBEDDINGS[kind])
    for path in STACKS[kind]:
        try:
            stack = model.get_submodule(path)
        except AttributeError:
            continue
        k = cfg.k if cfg.k is not None else math.floor(cfg.fraction * len(stack))
        frozen += sum(_numel(stack[i]) for i in range(k))
    return total - frozen


CASES = {
    "telly": lambda fam: telly.TellyConfig(k=1),
    "telly-embeddings-only": lambda fam: telly.TellyConfig(k=0),
    "telly-all-layers": lambda fam: telly.TellyConfig(fraction=1.0),
}
FORMULAS = {"telly": telly_count}
