"""petkit generate / petkit chat: greedy and seeded sampling, tokens streamed as returned, the adapter on
the model, the chat history in every turn's prompt, and clear errors (tiny Llama, offline tokenizer)."""

from __future__ import annotations

import io
import sys

import pytest
import torch

import petkit
from petkit.cli.main import main
from petkit.core.errors import ConfigError
from petkit.generation import Chat, Sampling, generate_text, load_generator, prompt_ids, render
from petkit.testing import tiny_chat_tokenizer, tiny_llama

@pytest.fixture
def folder(tmp_path):
    model = tiny_llama(seed=0)
    model.save_pretrained(tmp_path / "lm")
    tiny_chat_tokenizer().save_pretrained(tmp_path / "lm")
    return tmp_path / "lm"


@pytest.fixture
def adapter(folder, tmp_path):
    model, _ = load_generator(str(folder))
    torch.manual_seed(1)
    am = petkit.adapt(model, petkit.LoraConfig(r=2, targets="all-linear", init="gaussian"))
    with torch.no_grad():
        for name, p in am.named_parameters():
            if "lora_B" in name or "B" == name.rsplit(".", 1)[-1]:
                p.normal_(0, 0.5)
    am.save(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_greedy_text_is_streamed_as_returned_and_equals_plain_generate(folder):
    model, tok = load_generator(str(folder))
    ids = prompt_ids(tok, "hello there")
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n")  # the chat template, ready for the reply
    out = io.StringIO()
    text = generate_text(model, tok, ids, Sampling(max_new_tokens=12), out=out)
    plain = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                           pad_token_id=0, eos_token_id=2)
    assert text == tok.decode(plain[0, ids.shape[1]:], skip_special_tokens=True)
    assert out.getvalue() == text + "\n"


def test_the_adapter_is_on_the_model_that_generates(folder, adapter):
    base, tok = load_generator(str(folder))
    adapted, _ = load_generator(str(folder), str(adapter))
    assert isinstance(adapted, petkit.AdaptedModel) and adapted.adapters == ["default"]
    ids = prompt_ids(tok, "abc")
    with torch.no_grad():
        assert not torch.allclose(adapted(input_ids=ids).logits, base(input_ids=ids).logits)
    expected = adapted.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                                pad_token_id=0, eos_token_id=2)
    assert generate_text(adapted, tok, ids, Sampling(max_new_tokens=10)) == tok.decode(
        expected[0, ids.shape[1]:], skip_special_tokens=True)


def test_sampling_is_reproducible_by_seed_and_varies_across_seeds(folder):
    model, tok = load_generator(str(folder))
    ids = prompt_ids(tok, "x", chat=False)

    def sample(seed):
        return generate_text(model, tok, ids, Sampling(max_new_tokens=20, temperature=1.5, seed=seed))

    assert sample(3) == sample(3)
    assert len({sample(s) for s in range(4)}) > 1


def test_every_chat_turn_is_generated_from_the_whole_history(folder, monkeypatch):
    model, tok = load_generator(str(folder))
    seen = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw["input_ids"]) or real(**kw))
    chat = Chat(model, tok, Sampling(max_new_tokens=6), system="be brief")
    first = chat.reply("hi")
    chat.reply("again")
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
               {"role": "assistant", "content": first}, {"role": "user", "content": "again"}]
    assert torch.equal(seen[1], render(tok, history))
    chat.reset()
    chat.reply("new")
    assert torch.equal(seen[2], render(tok, [history[0], {"role": "user", "content": "new"}]))


def test_a_failed_turn_leaves_the_history_as_it_was(folder, monkeypatch):
    model, tok = load_generator(str(folder))
    chat = Chat(model, tok, Sampling(max_new_tokens=4))
    chat.reply("hi")
    before = list(chat.messages)
    monkeypatch.setattr(model, "generate", lambda **kw: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        chat.reply("lost")
    assert chat.messages == before


def test_clear_errors():
    model, tok = tiny_llama(), tiny_chat_tokenizer(chat_template=False)
    with pytest.raises(ConfigError, match="no chat template"):
        Chat(model, tok, Sampling())
    with pytest.raises(ConfigError, match="no chat template"):
        prompt_ids(tok, "hi", chat=True)
    with pytest.raises(ConfigError, match="system message needs the chat template"):
        prompt_ids(tok, "hi", chat=False, system="x")
    assert prompt_ids(tok, "hi").shape == (1, 2)  # no template: plain text to continue
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}):
        with pytest.raises(ConfigError):
            Sampling(**bad)
    with pytest.raises(ConfigError, match="nothing to answer"):
        Chat(model, tiny_chat_tokenizer(), Sampling()).reply("  ")


def test_cli_generate_and_chat(folder, adapter, capsys, monkeypatch):
    model, tok = load_generator(str(folder), str(adapter))
    expected = generate_text(model, tok, prompt_ids(tok, "abc"), Sampling(max_new_tokens=8))
    assert main(["generate", "--model", str(folder), "--adapter", str(adapter), "--prompt", "abc",
                 "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == expected + "\n"

    monkeypatch.setattr(sys, "stdin", io.StringIO("abc\n/reset\nabc\n/exit\nnever read\n"))
    assert main(["chat", "--model", str(folder), "--adapter", str(adapter), "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == 2 * (expected + "\n")  # /reset: the second turn starts afresh

    assert main(["chat", "--model", str(folder), "--temperature", "-1"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_the_prompt_is_the_one_sft_training_used():
    from petkit.data import prompt_ids as training_prompt

    tok = tiny_chat_tokenizer()
    for text in ("what is two plus two?", "name a colour"):
        assert prompt_ids(tok, text)[0].tolist() == training_prompt(tok, {"prompt": text, "completion": "x"})
