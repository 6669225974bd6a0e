"""Emulated fine-tuning: the reduction identities, greedy and sampled decoding, and the speculative
variant's exactness (its accept/resample rule reproduces the target distribution)."""

from __future__ import annotations

import pytest
import torch

from petkit import ConfigError
from petkit.compose import EFT, sampling_probs, verify
from petkit.testing import tiny_batch, tiny_gpt2, tiny_llama


@pytest.fixture(scope="module")
def models():
    return tiny_gpt2(seed=0), tiny_llama(seed=1), tiny_llama(seed=2)  # large base, small base, small "fine-tuned"


@pytest.fixture(scope="module")
def ids():
    return tiny_batch(tiny_llama(seed=0), seed=3)["input_ids"][:2, :6]


def log_softmax(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits, -1)


def test_reduction_identities(models, ids):
    large, small, ft = models
    torch.testing.assert_close(EFT(large, small, small).log_probs(ids), log_softmax(large, ids), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(EFT(small, small, ft).log_probs(ids), log_softmax(ft, ids), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(EFT(large, small, ft, beta=0).log_probs(ids), log_softmax(large, ids), atol=1e-5, rtol=1e-5)


def test_the_formula_and_per_token_normalisation(models, ids):
    large, small, ft = models
    eft = EFT(large, small, ft, beta=0.7)
    expected = torch.log_softmax(log_softmax(large, ids) + 0.7 * (log_softmax(ft, ids) - log_softmax(small, ids)), -1)
    torch.testing.assert_close(eft.log_probs(ids), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eft.log_probs(ids).exp().sum(-1), torch.ones(ids.shape))


def test_greedy_generation_follows_the_argmax(models, ids):
    eft = EFT(*models)
    out = eft.generate(ids, 5)
    expected = ids
    for _ in range(5):
        expected = torch.cat([expected, eft.log_probs(expected)[:, -1].argmax(-1, keepdim=True)], dim=1)
    torch.testing.assert_close(out, expected)


def test_speculative_greedy_equals_plain_greedy(models, ids):
    eft = EFT(*models)
    out, stats = eft.speculative_generate(ids[:1], 7, k=3)
    torch.testing.assert_close(out, eft.generate(ids[:1], 7))
    assert stats.tokens == 7 and stats.accepted <= stats.drafted


def test_a_draft_that_is_the_target_is_always_accepted(models, ids):
    """large base == small base: π_EFT is the small fine-tuned model's own distribution, so every draft
    passes and each large pass yields k + 1 tokens."""
    _, small, ft = models
    eft = EFT(small, small, ft)
    out, stats = eft.speculative_generate(ids[:1], 8, k=3, do_sample=True, generator=torch.Generator().manual_seed(0))
    assert out.shape[1] == ids.shape[1] + 8
    assert stats.accepted == stats.drafted and stats.large_passes == 2 and stats.passes_per_token == 0.25


def test_accept_or_resample_reproduces_the_target_distribution():
    p = torch.tensor([0.5, 0.3, 0.1, 0.1, 0.0])
    q = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    n = 20000
    for _ in range(n):
        draft = int(torch.multinomial(p, 1, generator=g))
        accepted, extra = verify([draft], p[None], torch.stack([q, q]), True, g)
        counts[draft if accepted else extra] += 1
    assert (counts / n - q).abs().sum() / 2 < 0.015  # total-variation distance to q


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    log_probs = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.testing.assert_close(sampling_probs(log_probs, True, 1.0, 0.7), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    torch.testing.assert_close(sampling_probs(log_probs, True, 1.0, 1.0), log_probs.exp())


def test_models_with_other_vocabularies_are_refused(models):
    from transformers import LlamaConfig, LlamaForCausalLM
    other = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ConfigError, match="one vocabulary.*'small_ft': 50.*share a tokenizer"):
        EFT(models[0], models[1], other)


@pytest.mark.parametrize("kw,message", [
    ({"k": 0}, "k .draft tokens per block. must be a positive integer"),
    ({"temperature": 0}, "temperature must be > 0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
])
def test_bad_decoding_arguments(models, ids, kw, message):
    with pytest.raises(ConfigError, match=message):
        EFT(*models).speculative_generate(ids[:1], 3, **kw)


def test_speculative_decodes_one_sequence(models, ids):
    with pytest.raises(ConfigError, match="one sequence at a time"):
        EFT(*models).speculative_generate(ids, 3)


def test_cached_generation_equals_recomputing_sampled_too(models, ids):
    """generate() reads only the new token per step (KV caches); the same samples as recomputing the
    whole sequence through log_probs at every step."""
    eft = EFT(*models, beta=0.8)
    out = eft.generate(ids, 6, do_sample=True, top_p=0.9, generator=torch.Generator().manual_seed(3))
    g, expected = torch.Generator().manual_seed(3), ids
    for _ in range(6):
        q = sampling_probs(eft.log_probs(expected)[:, -1], True, 1.0, 0.9)
        expected = torch.cat([expected, torch.multinomial(q, 1, generator=g)], dim=1)
    torch.testing.assert_close(out, expected)
