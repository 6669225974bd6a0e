"""Text from a causal LM with any adapter: the engine of `petkit generate` and `petkit chat`.

    model, tokenizer = load_generator("smollm2", adapter="runs/sft/adapter")
    text = generate_text(model, tokenizer, prompt_ids(tokenizer, "Name a colour."), Sampling(), out=sys.stdout)

Tokens are written to `out` as they are decoded (whole words where the tokenizer splits them), and the
whole reply is returned. `Chat` keeps a conversation's turns and renders them with the tokenizer's chat
template, so every reply sees the history.
"""

from __future__ import annotations

import dataclasses
from typing import TextIO

import torch
from torch import nn

from petkit.core.errors import ConfigError
from petkit.data.sft import has_chat_template


@dataclasses.dataclass
class Sampling:
    """How tokens are picked: temperature 0 is greedy decoding (deterministic); above 0, sampling with
    nucleus top_p, reproducible through seed."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": None}


def load_generator(model: str, adapter: str | None = None, *, force: bool = False) -> tuple[nn.Module, object]:
    """A causal LM (alias or local folder) with the adapter folder's adapters on it, and its tokenizer."""
    from petkit.core.load import load
    from petkit.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model)
    lm = load_model(model, task="causal_lm")
    return (load(lm, adapter, force=force) if adapter else lm).eval(), tokenizer


def prompt_ids(tokenizer, prompt: str, *, chat: bool | None = None, system: str | None = None) -> torch.Tensor:
    """The token ids of a prompt, shape (1, n). chat=None: through the chat template (one user turn) when
    the tokenizer has one, else as plain text to continue; chat=True without a template is an error."""
    if chat is None:
        chat = has_chat_template(tokenizer)
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return render(tokenizer, messages)
    if system:
        raise ConfigError("a system message needs the chat template (plain-text prompts have no turns)")
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def render(tokenizer, messages: list[dict]) -> torch.Tensor:
    """A conversation through the tokenizer's chat template, ending where the assistant speaks next."""
    require_chat_template(tokenizer)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return ids["input_ids"]


def require_chat_template(tokenizer) -> None:
    if not has_chat_template(tokenizer):
        raise ConfigError(f"{type(tokenizer).__name__} {getattr(tokenizer, 'name_or_path', '')!r} has no chat "
                          "template, so chat messages cannot be rendered; give plain text (petkit generate --raw)")


@torch.no_grad()
def generate_text(model: nn.Module, tokenizer, input_ids: torch.Tensor, sampling: Sampling,
                  out: TextIO | None = None) -> str:
    """The continuation of `input_ids` (special tokens such as end-of-turn left out), written to `out`
    piece by piece while it is generated when `out` is given."""
    from transformers import TextStreamer

    class Writer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if out is not None:
                out.write(text + ("\n" if stream_end else ""))
                out.flush()

    torch.manual_seed(sampling.seed)
    eos = [i for i in {tokenizer.eos_token_id, *_as_list(getattr(model.generation_config, "eos_token_id", None))}
           if i is not None]
    generated = model.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=sampling.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=eos or None,
        streamer=Writer(tokenizer, skip_prompt=True, skip_special_tokens=True), **sampling.generate_kwargs())
    return tokenizer.decode(generated[0, input_ids.shape[1]:], skip_special_tokens=True)


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


class Chat:
    """A conversation with a model: each reply is generated from the whole history."""

    def __init__(self, model: nn.Module, tokenizer, sampling: Sampling, system: str | None = None):
        require_chat_template(tokenizer)
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling
        self.system = system
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str, out: TextIO | None = None) -> str:
        if not text.strip():
            raise ConfigError("an empty message has nothing to answer")
        turn = [*self.messages, {"role": "user", "content": text}]
        answer = generate_text(self.model, self.tokenizer, render(self.tokenizer, turn), self.sampling, out)
        self.messages = [*turn, {"role": "assistant", "content": answer}]  # only a finished turn joins the history
        return answer
