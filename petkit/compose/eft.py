"""Emulated fine-tuning / up-scaling at decoding time (Mitchell et al., ICLR 2024, arXiv 2310.12962).

Three causal LMs over one vocabulary: a large base (pre-training scale), and a small base with its
fine-tuned version (fine-tuning behaviour). At every step the next-token distribution is

    π_EFT(v) = softmax_v( log π_large(v) + β·[log π_small_ft(v) − log π_small_base(v)] )

(per-token renormalisation; β = 1 emulates, other β scale the fine-tuning delta). `generate` samples
from it (greedy, temperature, top-p applied to π_EFT). `speculative_generate` drafts k tokens with the
small fine-tuned model and accepts each with min(1, q/p) (q: the sampling distribution from π_EFT,
p: the draft's), resampling from norm(max(0, q − p)) at the first rejection, plus one bonus token
when all k pass: exact samples from q with fewer large-model passes per token (counted and returned).

Both decode each model incrementally with its KV cache. In `speculative_generate` the small fine-tuned
model drafts token by token; the large base and the small base then read the drafted block (with the
token before it) in one cached forward each; after a rejection every cache is cropped back to the
accepted prefix, so the next block reads only what is new. Models whose cache cannot be cropped
(`is_croppable` false, e.g. a sliding window already full) re-read the sequence from the start instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.errors import ConfigError
from petkit.models.calls import cache_argument, find_cache


@dataclass
class SpeculativeStats:
    """Large-model forward passes and tokens produced: passes / tokens < 1 is the saving."""

    large_passes: int = 0
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def passes_per_token(self) -> float:
        return self.large_passes / max(1, self.tokens)


class EFT:
    def __init__(self, large_base: nn.Module, small_base: nn.Module, small_ft: nn.Module, beta: float = 1.0):
        sizes = {name: _vocab(m) for name, m in (("large_base", large_base), ("small_base", small_base),
                                                 ("small_ft", small_ft))}
        if len(set(sizes.values())) != 1:
            raise ConfigError(f"EFT combines next-token distributions over one vocabulary; the models have "
                              f"{sizes}: use models that share a tokenizer")
        if not isinstance(beta, (int, float)) or isinstance(beta, bool):
            raise ConfigError(f"beta must be a number, got {beta!r}")
        self.large, self.small_base, self.small_ft, self.beta = large_base, small_base, small_ft, float(beta)

    @torch.no_grad()
    def log_probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """log π_EFT at every position: (batch, length, vocab), normalised per position."""
        return self._combine(*(_log_softmax(m, input_ids) for m in (self.large, self.small_base, self.small_ft)))

    def _combine(self, large: torch.Tensor, base: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        """log π_EFT from the three models' log-probs at the same positions."""
        return torch.log_softmax(large + self.beta * (ft - base), dim=-1)

    def _streams(self) -> tuple[_Stream, _Stream, _Stream]:
        return _Stream(self.large), _Stream(self.small_base), _Stream(self.small_ft)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator | None = None,
                 eos_token_id: int | None = None) -> torch.Tensor:
        _check_sampling(max_new_tokens, temperature, top_p)
        streams, ids = self._streams(), input_ids
        for _ in range(max_new_tokens):
            log_q = self._combine(*(stream.read(ids)[:, -1] for stream in streams))  # each reads only the new token
            new = draw(sampling_probs(log_q, do_sample, temperature, top_p), do_sample, generator)
            ids = torch.cat([ids, new], dim=1)
            if eos_token_id is not None and bool((new == eos_token_id).all()):
                break
        return ids

    @torch.no_grad()
    def speculative_generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, k: int = 4,
                             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                             generator: torch.Generator | None = None) -> tuple[torch.Tensor, SpeculativeStats]:
        """One sequence (batch 1): blocks of k tokens drafted by the small fine-tune, each block verified
        with one cached forward of the large base (and of the small base)."""
        _check_sampling(max_new_tokens, temperature, top_p)
        if input_ids.shape[0] != 1:
            raise ConfigError("speculative_generate decodes one sequence at a time (batch 1)")
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ConfigError(f"k (draft tokens per block) must be a positive integer, got {k!r}")
        large, base, ft = streams = self._streams()
        ids, stats, goal = input_ids, SpeculativeStats(), input_ids.shape[1] + max_new_tokens
        while ids.shape[1] < goal:
            start, block = ids.shape[1], min(k, goal - ids.shape[1])
            draft, p, ft_log_p = ids, [], []
            for _ in range(block):  # the cheap draft: the small fine-tuned model alone, one cached token at a time
                ft_log_p.append(ft.read(draft)[0, -1])
                p.append(sampling_probs(ft_log_p[-1], do_sample, temperature, 1.0))
                draft = torch.cat([draft, draw(p[-1], do_sample, generator)[None]], dim=1)
            # the token before the block and the block: block + 1 positions, one forward of each base model
            large_log_p, base_log_p = (stream.read(draft)[0, -block - 1:] for stream in (large, base))
            stats.large_passes += 1
            stats.drafted += block
            q = sampling_probs(self._combine(large_log_p[:block], base_log_p[:block], torch.stack(ft_log_p)),
                               do_sample, temperature, top_p)
            tokens = draft[0, start:].tolist()
            accepted, extra = first_rejection(tokens, torch.stack(p), q, do_sample, generator)
            if extra is None:  # all passed: the bonus token needs the fine-tune's reading of the last draft too
                log_q = self._combine(large_log_p[block], base_log_p[block], ft.read(draft)[0, -1])
                extra = int(draw(sampling_probs(log_q, do_sample, temperature, top_p), do_sample, generator))
            stats.accepted += accepted
            for stream in streams:  # forget the rejected drafts: the caches hold the accepted prefix
                stream.rewind(start + accepted)
            new = (tokens[:accepted] + [extra])[: goal - start]
            stats.tokens += len(new)
            ids = torch.cat([ids, torch.tensor([new], dtype=ids.dtype)], dim=1)
        return ids, stats


def verify(tokens: list[int], p: torch.Tensor, q: torch.Tensor, do_sample: bool,
           generator: torch.Generator | None = None) -> tuple[int, int]:
    """Speculative sampling's test of drafted tokens (p: draft probabilities, k × vocab; q: target
    probabilities at the k positions and one more). Returns (tokens accepted, the next token): the
    resample from norm(max(0, q − p)) at the first rejection, or a bonus token from q after the last."""
    accepted, extra = first_rejection(tokens, p, q, do_sample, generator)
    return accepted, int(draw(q[len(tokens)], do_sample, generator)) if extra is None else extra


def first_rejection(tokens: list[int], p: torch.Tensor, q: torch.Tensor, do_sample: bool,
                    generator: torch.Generator | None = None) -> tuple[int, int | None]:
    """The accept/resample part of `verify` (q needs only the k drafted positions): (tokens accepted,
    the resampled replacement of the first rejected one), or (k, None) when every draft passes."""
    for j, token in enumerate(tokens):
        if not do_sample:  # greedy: the draft must be the target's argmax
            if token != int(q[j].argmax()):
                return j, int(q[j].argmax())
            continue
        if torch.rand((), generator=generator) >= q[j, token] / p[j, token]:
            residual = (q[j] - p[j]).clamp(min=0)
            residual = residual / residual.sum() if residual.sum() > 0 else q[j]
            return j, int(torch.multinomial(residual, 1, generator=generator))
    return len(tokens), None


def draw(probs: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token along the last dimension (kept, size 1): sampled from probs, or its argmax."""
    return torch.multinomial(probs, 1, generator=generator) if do_sample else probs.argmax(-1, keepdim=True)


def sampling_probs(log_probs: torch.Tensor, do_sample: bool, temperature: float, top_p: float) -> torch.Tensor:
    """The distribution actually sampled from: temperature, then nucleus (top-p) filtering."""
    if not do_sample:
        return log_probs.exp()
    probs = torch.softmax(log_probs / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # the smallest prefix reaching top_p
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
    return filtered / filtered.sum(-1, keepdim=True)


def _check_sampling(max_new_tokens, temperature, top_p) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p!r}")


class _Stream:
    """One model decoding incrementally: its KV cache holds the first `length` tokens of the sequence."""

    def __init__(self, model: nn.Module):
        self.model, self.argument = model, cache_argument(model.forward)
        self.cache, self.length = None, 0

    def read(self, ids: torch.Tensor) -> torch.Tensor:
        """log-probs at the positions of ids past `length`, each read after everything before it."""
        out = self.model(input_ids=ids[:, self.length:], use_cache=True, **{self.argument: self.cache})
        self.cache, self.length = find_cache(out), ids.shape[1]
        return torch.log_softmax(out.logits.float(), dim=-1)

    def rewind(self, length: int) -> None:
        """Keep the first `length` tokens only (drop rejected drafts)."""
        if length >= self.length:
            return
        if croppable(self.cache):
            self.cache.crop(length - self.length)  # negative: how many to remove (transformers 4 and 5 agree)
        else:  # what cannot be cut back is read again from the start
            self.cache, length = None, 0
        self.length = length


def croppable(cache) -> bool:
    """Whether crop() puts this cache back exactly (a DynamicCache can; a full sliding window cannot)."""
    return callable(getattr(cache, "crop", None)) and bool(getattr(cache, "is_croppable", True))


def _log_softmax(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)


def _vocab(model: nn.Module) -> int | None:
    embedding = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embedding is not None:
        return embedding.weight.shape[0]
    return getattr(getattr(model, "config", None), "vocab_size", None)
