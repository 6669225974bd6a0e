"""CoOp / CoCoOp for text-text dual encoders (petkit.dual) on a tiny random BERT and a character
tokenizer; one check on the real MiniLM (seconds)."""

from __future__ import annotations

import pytest
import torch

from petkit.core.errors import ConfigError
from petkit.dual import (CoOpClassifier, CoOpConfig, FitConfig, build_slots, ensemble, fit_coop,
                         template_class_embeddings)
from petkit.models.pooling import embed_sentences
from petkit.testing import tiny_bert, tiny_tokenizer

NAMES = ["cat", "dog", "fish"]


@pytest.fixture(scope="module")
def encoder():
    return tiny_bert(seed=0).bert


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_context_from_words_equals_the_hand_written_template(encoder, tokenizer):
    # Catches: context slots not written into the encoder input, context at the wrong positions, or
    # prompts pooled differently from a sentence ("a b c cat." embedded as plain text).
    # Character tokens: the trailing space of the init words is a token, so the prompt reads "a b c cat."
    model = CoOpClassifier(encoder, tokenizer, NAMES, CoOpConfig(ctx_init="a b c "))
    assert model.n_ctx == 6
    expected = embed_sentences(encoder, tokenizer, [f"a b c {name}." for name in NAMES])
    torch.testing.assert_close(model.class_embeddings(), expected, rtol=0, atol=1e-6)


def test_the_context_goes_through_the_encoder_and_only_it_gets_gradients(encoder, tokenizer):
    # Catches: prompts built without the context (no gradient reaches it), an unfrozen encoder.
    model = CoOpClassifier(encoder, tokenizer, NAMES, CoOpConfig(n_ctx=4))
    loss = torch.nn.functional.cross_entropy(model(torch.randn(5, 32)), torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()
    assert model.ctx.grad is not None and model.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["ctx"]


def test_class_positions_place_the_name_around_the_context(tokenizer):
    # Catches: 'middle' not splitting the context M/2 before and M/2 after the name.
    slots = build_slots(tokenizer, ["ab"], n_ctx=4, position="middle", suffix=".")
    name = tokenizer("ab", add_special_tokens=False)["input_ids"]
    assert slots.ctx_positions.tolist() == [[1, 2, 5, 6]]
    assert slots.input_ids[0, 3:5].tolist() == name
    assert slots.input_ids[0, 0].item() == tokenizer.cls_token_id
    front = build_slots(tokenizer, ["ab"], n_ctx=2, position="front", suffix=".")
    assert front.ctx_positions.tolist() == [[3, 4]] and front.input_ids[0, 1:3].tolist() == name


def test_csc_contexts_belong_to_one_class_each_and_the_unified_one_to_all(encoder, tokenizer):
    # Catches: CSC sharing one block (or indexing the wrong class), a unified context not shared.
    csc = CoOpClassifier(encoder, tokenizer, NAMES, CoOpConfig(n_ctx=3, csc=True))
    assert csc.ctx.shape == (3, 3, 32)
    before = csc.class_embeddings().detach()
    with torch.no_grad():
        csc.ctx[1] += torch.randn(3, 32)  # not a constant: LayerNorm removes that
    after = csc.class_embeddings().detach()
    changed = (after - before).abs().amax(-1) > 1e-4
    assert changed.tolist() == [False, True, False]
    unified = CoOpClassifier(encoder, tokenizer, NAMES, CoOpConfig(n_ctx=3))
    before = unified.class_embeddings().detach()
    with torch.no_grad():
        unified.ctx += torch.randn(3, 32)
    assert ((unified.class_embeddings().detach() - before).abs().amax(-1) > 1e-4).all()


def test_pool_exclude_ctx_pools_without_the_context(encoder, tokenizer):
    # Catches: the option ignored (context vectors still in the mean).
    model = CoOpClassifier(encoder, tokenizer, NAMES, CoOpConfig(n_ctx=3, pool_exclude_ctx=True))
    assert (model.attention_mask.sum(1) - model.pool_mask.sum(1)).tolist() == [3, 3, 3]
    assert model.pool_mask.gather(1, model.ctx_positions).sum() == 0


def test_fit_learns_the_training_labels_and_keeps_the_best_dev_step(encoder, tokenizer):
    # Catches: the optimiser not stepping the context, the kept state not being the best dev one.
    torch.manual_seed(0)
    model = CoOpClassifier(encoder, tokenizer, NAMES, CoOpConfig(n_ctx=4, csc=True))
    targets = model.class_embeddings().detach()
    labels = torch.arange(3).repeat(4)
    features = torch.randn(12, 32)  # random inputs: only a moved context can fit them
    weights_before = [p.clone() for p in model.encoder.parameters()]
    result = fit_coop(model, features, labels, FitConfig(steps=60, lr=5e-2, eval_every=10), dev=(features, labels))
    assert result.best_dev_accuracy == max(h["dev_accuracy"] for h in result.history)
    assert result.best_dev_accuracy >= 0.75
    from petkit.dual import accuracy
    assert accuracy(model, features, labels) == pytest.approx(result.best_dev_accuracy)
    assert not torch.allclose(model.class_embeddings().detach(), targets)
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.encoder.parameters()))


def test_cocoop_shifts_only_the_context_by_the_input(encoder, tokenizer):
    # Catches: the meta-net shift added to every token (or none), one set of class embeddings for all inputs.
    model = CoOpClassifier(encoder, tokenizer, NAMES, CoOpConfig(n_ctx=2, cocoop=True, meta_reduction=4))
    shift = torch.randn(2, 32)
    embeds = model.prompt_embeds(shift)
    plain = model.prompt_embeds()
    delta = embeds - plain.unsqueeze(0)
    is_ctx = torch.zeros(plain.shape[:2], dtype=torch.bool)
    is_ctx[torch.arange(3).unsqueeze(1), model.ctx_positions] = True
    torch.testing.assert_close(delta[:, is_ctx], shift[:, None, :].expand(2, int(is_ctx.sum()), 32))
    assert delta[:, ~is_ctx].abs().max() == 0
    g = model.class_embeddings(torch.randn(2, 32))
    assert g.shape == (2, 3, 32) and not torch.allclose(g[0], g[1])
    model(torch.randn(2, 32)).sum().backward()
    assert model.meta_net[0].weight.grad is not None
    with pytest.raises(ConfigError, match="depend on the input"):
        model.class_embeddings()


@pytest.mark.parametrize("kwargs, message", [
    ({"n_ctx": 0}, "context length"),
    ({"class_position": "left"}, "class_position"),
    ({"ctx_init": "  "}, "ctx_init"),
    ({"csc": True, "cocoop": True}, "cannot be combined"),
    ({"logit_scale": 0}, "logit_scale"),
])
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CoOpConfig(**kwargs)


def test_bad_class_names_and_init_words_are_refused(encoder, tokenizer):
    with pytest.raises(ConfigError, match=r"index \[1\]\) tokenize to nothing"):
        CoOpClassifier(encoder, tokenizer, ["cat", "", "dog"])
    with pytest.raises(ConfigError, match="at least one class"):
        CoOpClassifier(encoder, tokenizer, [])
    with pytest.raises(ConfigError, match="n_ctx=4 but ctx_init"):
        CoOpClassifier(encoder, tokenizer, NAMES, CoOpConfig(n_ctx=4, ctx_init="ab"))


def test_template_ensemble_and_bad_templates(encoder, tokenizer):
    # Catches: an ensemble that does not re-normalise, or averages over classes instead of templates.
    one = template_class_embeddings(encoder, tokenizer, NAMES, ["a {}."])
    two = template_class_embeddings(encoder, tokenizer, NAMES, ["a {}.", "the {}!"])
    torch.testing.assert_close(ensemble(one), one[0])
    mixed = ensemble(two)
    assert mixed.shape == (3, 32)
    torch.testing.assert_close(mixed.norm(dim=-1), torch.ones(3))
    with pytest.raises(ConfigError, match="'\\{\\}'"):
        template_class_embeddings(encoder, tokenizer, NAMES, ["no slot"])


def test_minilm_template_init_reproduces_the_template_embedding():
    # Pins transformers' BERT inputs_embeds path (position + token type + LayerNorm added) on the real model.
    from petkit.models import load_model, load_tokenizer

    encoder, tokenizer = load_model("minilm", task="base"), load_tokenizer("minilm")
    names = ["sports", "science and technology"]
    model = CoOpClassifier(encoder, tokenizer, names, CoOpConfig(ctx_init="a news article about"))
    expected = template_class_embeddings(encoder, tokenizer, names, ["a news article about {}."])[0]
    torch.testing.assert_close(model.class_embeddings(), expected, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="tokenize to nothing"):
        CoOpClassifier(encoder, tokenizer, ["sports", "   "])
