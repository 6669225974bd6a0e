"""Continuous batching for a causal LM: sequences join and leave the running batch between decode steps.

Each sequence has its own rows of the KV cache (kv.RunningCache), its own adapter (the mixed-adapter
forward routes row i through adapter i, None = the base) and its own sampling settings. `admit`
prefills newcomers together and adds them to the batch; `step` decodes one token for every running
sequence. Both run on the engine thread only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from transformers import DynamicCache

from petkit.models.calls import cache_argument
from petkit.serve.kv import RunningCache
from petkit.serve.sampling import find_stop, next_tokens, safe_prefix


@dataclasses.dataclass
class Sequence:
    """One completion request as the decoder sees it. `emit(kind, payload)` is called on the engine
    thread with ("text", str) pieces and finally ("done", finish_reason)."""

    prompt: list[int]
    adapter: str | None
    max_tokens: int
    emit: Callable[[str, object], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stops: list[str] = dataclasses.field(default_factory=list)
    ignore_eos: bool = False
    generated: list[int] = dataclasses.field(default_factory=list)
    text: str = ""                     # the decoded completion so far
    sent: int = 0                      # characters of it already emitted
    prefix_at: int = 0                 # incremental detokenisation offsets into generated (see _new_text)
    read_at: int = 0
    cancelled: bool = False            # set by the client's handler when it goes away
    arrived: float = 0.0               # perf_counter() when it was queued (time to first token)
    finish_reason: str | None = None

    @property
    def tokens(self) -> int:
        """What admitting it costs: its prompt's length (the engine's prefill budget counts these)."""
        return len(self.prompt)

    def __post_init__(self) -> None:
        self.generator = None
        if self.temperature > 0:
            self.generator = torch.Generator()
            if self.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.seed)


class Decoder:
    def __init__(self, model, tokenizer, eos_ids: set[int], metrics=None):
        self.model, self.tokenizer, self.eos_ids, self.metrics = model, tokenizer, eos_ids, metrics
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
        self.running: list[Sequence] = []
        self.kv: RunningCache | None = None
        self._cache_kw = cache_argument(model.base.forward)  # `cache` in transformers 5.25+, else past_key_values

    @property
    def size(self) -> int:
        return len(self.running)

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def abandon(self) -> list[Sequence]:
        """Give up every running sequence (the engine is stopping); they are returned to be told so."""
        gone, self.running, self.kv = self.running, [], None
        return gone

    # -- joining ------------------------------------------------------------------------------
    @torch.no_grad()
    def admit(self, newcomers: list[Sequence]) -> None:
        """Prefill the newcomers in one left-padded forward, pick their first tokens and add them."""
        width = max(len(s.prompt) for s in newcomers)
        ids = torch.full((len(newcomers), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(newcomers), width), dtype=torch.long)
        for i, s in enumerate(newcomers):
            ids[i, width - len(s.prompt):] = torch.tensor(s.prompt)
            mask[i, width - len(s.prompt):] = 1
        cache = DynamicCache()
        logits = self._forward(ids, mask, (mask.cumsum(1) - 1).clamp(min=0), cache, newcomers, "prefill")
        joined = RunningCache(cache, mask)
        if self.kv is None:
            self.kv = joined
        else:
            self.kv.join(joined)
        self.running.extend(newcomers)
        self._advance(newcomers, logits)

    # -- decoding -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        """One token for every running sequence (cancelled ones leave first)."""
        self._retire()
        if not self.running:
            return
        ids = torch.tensor([[s.generated[-1]] for s in self.running])
        self.kv.append_column()
        logits = self._forward(ids, self.kv.mask, self.kv.positions() - 1, self.kv.cache, self.running, "decode")
        self._advance(self.running, logits)
        self._retire()

    def _forward(self, ids, mask, positions, cache, seqs, kind: str) -> torch.Tensor:
        adapters = [s.adapter for s in seqs]
        if self.metrics is not None:
            self.metrics.observe_forward(kind, adapters)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, adapter_names=adapters, **{self._cache_kw: cache})
        return out.logits[:, -1]

    def _advance(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        tokens = next_tokens(logits, [s.temperature for s in seqs], [s.top_p for s in seqs],
                             [s.generator for s in seqs])
        for s, token in zip(seqs, tokens):
            if s.finish_reason is None and not s.cancelled:
                self._take(s, token)

    def _take(self, s: Sequence, token: int) -> None:
        s.generated.append(token)
        if token in self.eos_ids and not s.ignore_eos:
            return self._finish(s, "stop")
        s.text += self._new_text(s)
        cut = find_stop(s.text, s.stops) if s.stops else None
        if cut is not None:
            s.text = s.text[:cut]
            return self._finish(s, "stop")
        if len(s.generated) >= s.max_tokens:
            return self._finish(s, "length")
        ready = safe_prefix(s.text, s.stops)
        if ready > s.sent:
            s.emit("text", s.text[s.sent:ready])
            s.sent = ready

    def _new_text(self, s: Sequence) -> str:
        """The text the newest token adds. Incremental detokenisation: decode only the tokens since the
        last complete piece, with a few before them as context (a token's text can depend on its left
        neighbour, e.g. a leading space), and hold back a piece that ends inside a multi-byte character."""
        ids, decode = s.generated, self.tokenizer.decode
        before = decode(ids[s.prefix_at:s.read_at], skip_special_tokens=True)
        now = decode(ids[s.prefix_at:], skip_special_tokens=True)
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        s.prefix_at, s.read_at = s.read_at, len(ids)
        return now[len(before):]

    def _finish(self, s: Sequence, reason: str) -> None:
        if len(s.text) > s.sent:
            s.emit("text", s.text[s.sent:])
            s.sent = len(s.text)
        s.finish_reason = reason
        s.emit("done", reason)

    def _retire(self) -> None:
        """Drop finished and cancelled sequences from the batch and their rows from the cache."""
        keep = [i for i, s in enumerate(self.running) if s.finish_reason is None and not s.cancelled]
        if len(keep) == len(self.running):
            return
        gone = [s for i, s in enumerate(self.running) if i not in set(keep)]
        self.running = [self.running[i] for i in keep]
        for s in gone:
            if s.finish_reason is None:  # cancelled: tell the engine it left, so its adapter is released
                s.finish_reason = "cancelled"
                s.emit("done", "cancelled")
        if not keep:
            self.kv = None
        else:
            self.kv.keep(keep)
