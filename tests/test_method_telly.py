"""Telly-K: which parameters train on each tiny family, the paper's logged counts, gradients stop at
layer K, and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import petkit
from method_cases import telly as telly_cases
from petkit.methods.telly import TellyConfig, select_trainable
from petkit.models.structure import embedding_modules, layer_stacks
from petkit.testing import TINY_MODELS, tiny_batch, tiny_bert, tiny_t5

# Per family: (frozen at k=1, trained at k=1), as parameter-name prefixes written out by hand
EXPECTED = {
    "bert": (["bert.embeddings.", "bert.encoder.layer.0."], ["bert.encoder.layer.1.", "bert.pooler.", "classifier."]),
    "gpt2": (["transformer.wte.", "transformer.wpe.", "transformer.h.0."], ["transformer.h.1.", "transformer.ln_f."]),
    "llama": (["model.embed_tokens.", "model.layers.0."], ["model.layers.1.", "model.norm."]),
    "t5": (["shared.", "encoder.block.0.", "decoder.block.0."],
           ["encoder.block.1.", "decoder.block.1.", "encoder.final_layer_norm.", "decoder.final_layer_norm."]),
    "vit": (["vit.embeddings.", "vit.layers.0."], ["vit.layers.1.", "vit.layernorm.", "classifier."]),
}


@pytest.mark.parametrize("family", EXPECTED)
def test_embeddings_and_bottom_layer_frozen(family):
    am = petkit.adapt(TINY_MODELS[family](), TellyConfig(k=1))
    frozen, trained = EXPECTED[family]
    names = {n: p.requires_grad for n, p in am.base.named_parameters()}
    for n, grad in names.items():
        assert grad == (not any(n.startswith(f) for f in frozen)), n
    for prefix in trained:
        assert any(n.startswith(prefix) and g for n, g in names.items()), prefix
    assert am.num_parameters("default") == sum(p.numel() for p in am.trainable_parameters())


def test_k0_freezes_only_embeddings_and_k_minus_1_is_full_fine_tuning():
    am = petkit.adapt(tiny_bert(), TellyConfig(k=0))
    assert {n for n, p in am.base.named_parameters() if not p.requires_grad} == {
        n for n, _ in am.base.named_parameters() if n.startswith("bert.embeddings.")}
    full = petkit.adapt(tiny_bert(), TellyConfig(k=-1))
    assert all(p.requires_grad for p in full.base.parameters())


def test_k_equal_to_depth_trains_only_the_top():
    am = petkit.adapt(tiny_t5(), TellyConfig(k=2))
    trained = {n for n, p in am.base.named_parameters() if p.requires_grad}
    assert trained == {"encoder.final_layer_norm.weight", "decoder.final_layer_norm.weight"}  # lm_head is tied to shared


@pytest.mark.parametrize("fraction,k", [(0.0, 0), (0.49, 0), (0.5, 1), (0.99, 1), (1.0, 2)])
def test_fraction_rounds_down(fraction, k):
    by_fraction = petkit.adapt(tiny_bert(), TellyConfig(fraction=fraction))
    by_k = petkit.adapt(tiny_bert(), TellyConfig(k=k))
    assert by_fraction.state.selected["default"] == by_k.state.selected["default"]
    assert TellyConfig().fraction == 0.5


def test_gradients_stop_at_layer_k():
    base = tiny_bert()
    am = petkit.adapt(base, TellyConfig(k=1))
    seen = {}
    for i, layer in enumerate(base.bert.encoder.layer):
        layer.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(i, out[0].requires_grad))
    am.train()
    loss = am(**tiny_batch(base)).loss
    loss.backward()
    assert seen == {0: False, 1: True}  # autograd records nothing below layer K
    assert all(p.grad is None for n, p in base.named_parameters() if n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")))
    assert base.bert.encoder.layer[1].output.dense.weight.grad is not None


def test_selection_sees_through_other_adapters():
    plain = select_trainable(tiny_bert(), TellyConfig(k=1))
    am = petkit.adapt(tiny_bert(), petkit.LoraConfig(r=2, targets=["query"]), name="lora")
    petkit.adapt(am, TellyConfig(k=1), name="telly")
    assert select_trainable(am.base, TellyConfig(k=1)) == plain
    frozen = {n for n in am.state.selected["telly"] if ".layer.0." in n or "embeddings" in n}
    assert not frozen and any("layer.1.attention.self.query.weight" in n for n in am.state.selected["telly"])


def test_counts_from_the_papers_logs():
    # UniXcoder-base (RoBERTa shape, 51416 tokens, 1026 positions, 10 token types) plus the extra dense
    # layer of the code-generation model: the trainable counts of Telly's CONCODE training logs.
    from transformers import RobertaConfig, RobertaModel

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = RobertaModel(RobertaConfig(vocab_size=51416, max_position_embeddings=1026, type_vocab_size=10))
            self.dense = nn.Linear(768, 768)
            self.lm_head = nn.Linear(768, 51416, bias=False)
            self.lm_head.weight = self.encoder.embeddings.word_embeddings.weight

    with torch.device("meta"):
        model = Seq2Seq()
    names = {n: p.numel() for n, p in model.named_parameters()}

    def trainable(k):
        paths = select_trainable(model, TellyConfig(k=k))
        return sum(v for n, v in names.items() if any(m in ("", n) or n.startswith(m + ".") for m in paths))

    assert [trainable(k) for k in (-1, 0, 5, 11)] == [126_520_320, 86_235_648, 50_796_288, 8_269_056]


def test_k_larger_than_the_depth_is_refused():
    with pytest.raises(petkit.TargetError, match=r"k=3 is larger than the number of layers \(bert.encoder.layer: 2\)"):
        petkit.adapt(tiny_bert(), TellyConfig(k=3))
    with pytest.raises(petkit.TargetError, match=r"encoder.block: 2, decoder.block: 2"):
        petkit.adapt(tiny_t5(), TellyConfig(k=3))


def test_model_without_a_layer_stack_is_refused():
    with pytest.raises(petkit.TargetError, match="no stack of transformer layers"):
        petkit.adapt(nn.Sequential(nn.Linear(4, 4)), TellyConfig(k=0))


@pytest.mark.parametrize("kwargs,message", [
    ({"k": -2}, "k must be an int >= -1"),
    ({"k": 1.0}, "k must be an int >= -1"),
    ({"k": True}, "k must be an int >= -1"),
    ({"fraction": 1.5}, r"fraction must be in \[0, 1\]"),
    ({"fraction": "half"}, r"fraction must be in \[0, 1\]"),
    ({"k": 2, "fraction": 0.5}, "give k or fraction, not both"),
    ({"targets": ["query"]}, "telly chooses what trains itself"),
    ({"exclude": ["query"]}, "telly chooses what trains itself"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(petkit.ConfigError, match=message):
        TellyConfig(**kwargs)


@pytest.mark.parametrize("family", TINY_MODELS)
def test_structure_matches_the_table(family):
    # the matrix formula reads any other architecture's embeddings and stacks from the structure helpers
    model = TINY_MODELS[family](seed=0)
    kind = type(model).__name__
    stacks = layer_stacks(model)
    assert [n for n, _ in stacks] == [s for s in telly_cases.STACKS[kind] if s in dict(model.named_modules())]
    def params(paths):
        return {id(p) for path in paths for p in model.get_submodule(path).parameters()}

    assert params(embedding_modules(model, stacks)) == params(telly_cases.EMBEDDINGS[kind])  # T5's tied tables once
