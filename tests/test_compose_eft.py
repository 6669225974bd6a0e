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


# Speculative decoding with KV caches, on a tiny Llama trio (SmolLM2's architecture, random weights).

def nearby_llama(seed: int) -> torch.nn.Module:
    """One random tiny Llama plus 30% noise on every weight (seed), its final norm scaled by random
    gains: sharper next-token distributions than random init's near-uniform ones, and three such
    models agree often but not always, so drafts are sometimes accepted and sometimes rejected."""
    model, noise = tiny_llama(seed=0), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=noise))
        model.model.norm.weight.copy_(6 * torch.randn(model.model.norm.weight.shape, generator=noise))
    return model


def llama_trio():
    return tuple(nearby_llama(seed) for seed in (1, 2, 3))  # large base, small base, small "fine-tuned"


@pytest.fixture(scope="module")
def llamas():
    return llama_trio()


PROMPTS = [(0, 3), (1, 6), (2, 9)]  # (row of the batch, prompt length)


def prompt(row, length):
    return tiny_batch(tiny_llama(seed=0), seed=3)["input_ids"][row:row + 1, :length]


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_speculative_greedy_equals_cached_greedy_with_rejections(llamas, k):
    eft, rejected = EFT(*llamas), 0
    for row, length in PROMPTS:
        ids = prompt(row, length)
        out, stats = eft.speculative_generate(ids, 12, k=k)
        torch.testing.assert_close(out, eft.generate(ids, 12), rtol=0, atol=0)
        assert stats.tokens == 12
        rejected += stats.drafted - stats.accepted
    assert rejected > 0  # the caches were cropped back after rejections


@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_greedy_when_every_draft_is_accepted(llamas, k):
    """large base == small base: π_EFT is the fine-tune's own distribution, so each greedy draft is its
    argmax; every block of k drafts passes and brings a bonus token. (The first of the trio serves as
    the fine-tune: its greedy continuation of this prompt does not just repeat one token.)"""
    ft, small, _ = llamas
    eft = EFT(small, small, ft)
    ids = prompt(1, 5)
    out, stats = eft.speculative_generate(ids, 12, k=k)
    torch.testing.assert_close(out, eft.generate(ids, 12), rtol=0, atol=0)
    assert stats.accepted == stats.drafted and stats.large_passes == -(-12 // (k + 1))


class ForwardCounter:
    def __init__(self, model):
        self.calls, self.tokens = 0, 0
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls += 1
        self.tokens += kwargs["input_ids"].shape[1]


def test_one_cached_large_forward_per_block(llamas):
    """The large base runs once per block and reads only what it has not read: the prompt once, then
    per block the token before it and its drafts; never the whole sequence again."""
    large, small, ft = llama_trio()
    counters = [ForwardCounter(m) for m in (large, small, ft)]
    ids = prompt(2, 8)
    out, stats = EFT(large, small, ft).speculative_generate(ids, 15, k=3)
    assert out.shape[1] == 8 + 15 and stats.tokens == 15
    blocks = stats.large_passes
    assert counters[0].calls == counters[1].calls == blocks  # one forward of each base model per block
    assert blocks > 15 / 4  # rejections: fewer than k + 1 tokens per block on average
    assert counters[0].tokens == counters[1].tokens == 8 + stats.drafted + blocks - 1
    assert counters[2].calls <= stats.drafted + blocks  # the draft: one cached token a forward (+ bonus readings)


def recomputing_stream_check(monkeypatch, checked):
    """Every cached read of every model must give the log-probs a fresh forward over the whole
    sequence gives: the caches after crops equal the caches of the accepted prefix."""
    from petkit.compose import eft as eft_module
    read, rewind = eft_module._Stream.read, eft_module._Stream.rewind

    def checked_read(stream, ids):
        fresh_from, out = stream.length, read(stream, ids)
        expected = log_softmax(stream.model, ids)[:, fresh_from:]
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        checked["reads"] += 1
        checked["after_crop"] += stream.cropped
        stream.cropped = 0
        return out

    def counted_rewind(stream, length):
        stream.cropped = int(length < stream.length)
        checked["crops"] += stream.cropped
        rewind(stream, length)

    monkeypatch.setattr(eft_module._Stream, "cropped", 0, raising=False)
    monkeypatch.setattr(eft_module._Stream, "read", checked_read)
    monkeypatch.setattr(eft_module._Stream, "rewind", counted_rewind)


@pytest.mark.parametrize("do_sample", [False, True])
def test_the_cache_after_a_rejection_equals_a_fresh_cache_of_the_accepted_prefix(llamas, monkeypatch, do_sample):
    checked = {"reads": 0, "crops": 0, "after_crop": 0}
    recomputing_stream_check(monkeypatch, checked)
    EFT(*llamas, beta=0.8).speculative_generate(prompt(0, 6), 14, k=4, do_sample=do_sample, top_p=0.9,
                                                generator=torch.Generator().manual_seed(1))
    assert checked["crops"] > 0 and checked["after_crop"] > 0 and checked["reads"] > checked["after_crop"]


def recomputing_speculative(eft, ids, max_new_tokens, k, temperature, top_p, generator):
    """The speculative sampler written without caches: every model over the whole sequence per step."""
    goal = ids.shape[1] + max_new_tokens
    while ids.shape[1] < goal:
        block, start = min(k, goal - ids.shape[1]), ids.shape[1]
        draft, p = ids, []
        for _ in range(block):
            p.append(sampling_probs(log_softmax(eft.small_ft, draft)[0, -1], True, temperature, 1.0))
            draft = torch.cat([draft, torch.multinomial(p[-1], 1, generator=generator)[None]], dim=1)
        q = sampling_probs(eft.log_probs(draft)[0, start - 1:], True, temperature, top_p)
        tokens = draft[0, start:].tolist()
        accepted, extra = verify(tokens, torch.stack(p), q, True, generator)
        ids = torch.cat([ids, torch.tensor([(tokens[:accepted] + [extra])[: goal - start]])], dim=1)
    return ids


@pytest.mark.parametrize("k", [2, 5])
def test_cached_speculative_sampling_draws_what_recomputing_draws(llamas, k):
    """Same generator, same draws: the cached sampler tests the same drafts against the same q and p
    as the recomputing one, so the accept/resample rule (tested for exactness above) sees the right
    distributions."""
    eft = EFT(*llamas, beta=1.2)
    ids = prompt(1, 4)
    out, _ = eft.speculative_generate(ids, 16, k=k, do_sample=True, temperature=0.7, top_p=0.9,
                                      generator=torch.Generator().manual_seed(7))
    expected = recomputing_speculative(eft, ids, 16, k, 0.7, 0.9, torch.Generator().manual_seed(7))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_a_cache_that_cannot_be_cropped_is_read_again(monkeypatch):
    from petkit.compose import eft as eft_module
    monkeypatch.setattr(eft_module, "croppable", lambda cache: False)
    large, small, ft = llama_trio()
    counter = ForwardCounter(large)
    eft, ids = EFT(large, small, ft), prompt(0, 5)
    out, stats = eft.speculative_generate(ids, 10, k=3)
    torch.testing.assert_close(out, eft.generate(ids, 10), rtol=0, atol=0)
    assert counter.tokens > 5 + stats.drafted + stats.large_passes - 1  # whole prefixes read again
