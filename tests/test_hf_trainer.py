"""petkit inside the Hugging Face stack: an AdaptedModel as the model of transformers.Trainer and of TRL's
SFTTrainer (petkit.hf), and the older route that hands `am.base` to the Trainer.

Everything runs offline on tiny random models: a word-level tokenizer is built here, TRL gets it as
processing_class, and nothing is read from a hub."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers

import petkit
import petkit.hf
from petkit.testing import TINY_MODELS, VOCAB_SIZE, tiny_batch, tiny_llama

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

LORA = petkit.LoraConfig(r=4, targets=["attn.q", "attn.v"])


class Repeat(torch.utils.data.Dataset):
    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i % len(v)] for k, v in self.batch.items()}


class Tokens(torch.utils.data.Dataset):
    """Causal-LM rows of random tokens; `unlabelled[i]` leading positions of row i carry no label, so
    micro-batches hold different numbers of labelled tokens."""

    def __init__(self, n: int = 16, length: int = 8, seed: int = 0, unlabelled=(0,)):
        self.ids = torch.randint(4, VOCAB_SIZE, (n, length), generator=torch.Generator().manual_seed(seed))
        self.unlabelled = unlabelled

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[: self.unlabelled[i % len(self.unlabelled)]] = -100
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": labels}


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB_SIZE)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                bos_token="<s>", unk_token="<unk>")


def args(out: Path, **overrides):
    kw = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2, save_strategy="no",
              report_to="none", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    return transformers.TrainingArguments(**{**kw, **overrides})


def adapted(config=LORA, seed: int = 0) -> petkit.AdaptedModel:
    torch.manual_seed(seed)  # LoRA's A is drawn from the global generator
    return petkit.adapt(tiny_llama(), config)


def perturb(am) -> None:
    """Move every adapter tensor away from its init (LoRA starts as the identity), the same way each time."""
    with torch.no_grad():
        for p in am.trainable_parameters():
            g = torch.Generator().manual_seed(p.numel())
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))


def params(am) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in am.adapter_parameters("default").items()}


def assert_same(a: dict, b: dict, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


# -- the am.base route (docs/training.md) ----------------------------------------------------------

def test_transformers_trainer_trains_the_adapter_of_am_base(tmp_path):
    am = petkit.adapt(TINY_MODELS["bert"](seed=0), petkit.LoraConfig(r=4, targets=["attn.q", "attn.v"]))
    batch = tiny_batch(am.base, seed=1)
    own = {id(p) for p in am.trainable_parameters()}
    before = {n: p.detach().clone() for n, p in am.base.named_parameters()}
    transformers.Trainer(model=am.base, args=args(tmp_path / "hf", max_steps=3),
                         train_dataset=Repeat(batch, 16)).train()

    for name, p in am.base.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (id(p) in own), f"{name}: {'moved' if moved else 'did not move'}"
    am.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    am.save(tmp_path / "adapter")
    back = petkit.load(TINY_MODELS["bert"](seed=0), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(back(**inputs).logits, am(**inputs).logits)


# -- the AdaptedModel itself in a plain transformers.Trainer ---------------------------------------

def test_plain_trainer_trains_an_adapted_model_reports_eval_loss_and_resumes(tmp_path):
    am = adapted()
    before = params(am)
    trainer = transformers.Trainer(model=am, args=args(tmp_path, save_strategy="steps", save_steps=2),
                                   train_dataset=Tokens(), eval_dataset=Tokens(8, seed=1))
    assert trainer.label_names == ["labels"] and trainer._loss_shifts_labels
    trainer.train()
    assert all(not torch.equal(before[k], v) for k, v in params(am).items() if k.endswith(".B"))
    assert "eval_loss" in trainer.evaluate()
    assert trainer.state.total_flos > 0  # Trainer's num_parameters(exclude_embeddings=True) call worked

    # the plain Trainer checkpoints the whole model; tied embeddings are written once, and it resumes
    files = {p.name for p in (tmp_path / "checkpoint-2").iterdir()}
    assert "model.safetensors" in files and "adapter_model.safetensors" not in files
    again = adapted(seed=1)
    transformers.Trainer(model=again, args=args(tmp_path), train_dataset=Tokens()).train(
        resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert_same(params(again), params(am))


def test_state_dict_lists_tied_weights_once_and_loads_back_strictly():
    am = adapted()
    state = am.state_dict()
    assert "base.model.embed_tokens.weight" in state and "base.lm_head.weight" not in state
    other = adapted(seed=1)
    other.load_state_dict(state)  # strict: the alias is filled from the key that was kept
    assert other.base.lm_head.weight is other.base.model.embed_tokens.weight
    assert_same(params(other), params(am))


# -- petkit.hf.Trainer: adapter-only checkpoints ---------------------------------------------------

def test_petkit_trainer_checkpoints_only_the_adapter_and_petkit_loads_it(tmp_path):
    am = adapted()
    trainer = petkit.hf.Trainer(model=am, args=args(tmp_path, save_strategy="steps", save_steps=2),
                                train_dataset=Tokens(), eval_dataset=Tokens(8, seed=1), processing_class=tokenizer())
    trainer.train()
    assert "eval_loss" in trainer.evaluate()
    checkpoint = tmp_path / "checkpoint-4"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "training_args.bin", "tokenizer.json",
            "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= files
    assert not {"model.safetensors", "pytorch_model.bin", "config.json"} & files
    assert (checkpoint / "adapter_model.safetensors").stat().st_size < 8_000  # 8 LoRA matrices, not the base

    back = petkit.load(tiny_llama(), checkpoint)
    ids = Tokens()[0]["input_ids"][None]
    am.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, am(input_ids=ids).logits)


def test_resume_from_a_petkit_checkpoint_reaches_the_uninterrupted_adapter(tmp_path):
    whole = adapted()
    petkit.hf.Trainer(model=whole, args=args(tmp_path / "a", save_strategy="steps", save_steps=2),
                      train_dataset=Tokens()).train()
    resumed = adapted(seed=1)  # other initial values: only the checkpoint can make them equal
    petkit.hf.Trainer(model=resumed, args=args(tmp_path / "b"), train_dataset=Tokens()).train(
        resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert_same(params(resumed), params(whole), rtol=1e-5, atol=1e-7)


def test_resume_refuses_a_checkpoint_of_another_adapter(tmp_path):
    petkit.hf.Trainer(model=adapted(), args=args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
                      train_dataset=Tokens()).train()
    other = adapted(petkit.LoraConfig(r=2, targets=["attn.q", "attn.v"]))
    with pytest.raises(petkit.AdapterFileError, match="another config"):
        petkit.hf.Trainer(model=other, args=args(tmp_path / "b"), train_dataset=Tokens()).train(
            resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_load_best_model_at_end_restores_the_best_checkpoints_adapter(tmp_path):
    am = adapted()
    trainer = petkit.hf.Trainer(model=am, args=args(tmp_path, max_steps=6, eval_strategy="steps", eval_steps=2,
                                                    save_strategy="steps", save_steps=2, load_best_model_at_end=True,
                                                    learning_rate=0.3),  # big steps: the loss goes up again
                                train_dataset=Tokens(), eval_dataset=Tokens(8, seed=1))
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    assert best.name != "checkpoint-6"  # else loading the best would change nothing
    assert_same(params(am), params(petkit.load(tiny_llama(), best)))


def test_petkit_trainer_keeps_the_dataset_columns_the_wrapped_model_takes(tmp_path):
    am = petkit.adapt(TINY_MODELS["bert"](seed=0), petkit.LoraConfig(r=2, targets=["attn.q"]))
    trainer = petkit.hf.Trainer(model=am, args=args(tmp_path))
    trainer._set_signature_columns_if_needed()
    assert {"input_ids", "token_type_ids", "attention_mask", "labels", "adapter_names"} <= set(trainer._signature_columns)


def test_petkit_trainer_runs_the_once_per_step_gradient_terms(tmp_path, monkeypatch):
    am = adapted()
    calls = []
    monkeypatch.setattr(am, "before_optimizer_step", lambda: calls.append(1))
    petkit.hf.Trainer(model=am, args=args(tmp_path, max_steps=3, per_device_train_batch_size=2,
                                          gradient_accumulation_steps=2), train_dataset=Tokens()).train()
    assert len(calls) == 3  # once per optimizer step, not per micro-batch


def test_label_smoothing_shifts_a_causal_lms_labels(tmp_path):
    from transformers.trainer_pt_utils import LabelSmoother
    am = adapted()
    trainer = petkit.hf.Trainer(model=am, args=args(tmp_path, label_smoothing_factor=0.1), train_dataset=Tokens())
    batch = {k: v[None] for k, v in Tokens()[0].items()}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        loss = trainer.compute_loss(am, batch)
        shifted = LabelSmoother(0.1)(am(**inputs), batch["labels"], shift_labels=True)
        unshifted = LabelSmoother(0.1)(am(**inputs), batch["labels"])
    torch.testing.assert_close(loss, shifted)
    assert not torch.allclose(loss, unshifted)


def test_petkit_trainer_needs_an_adapted_model(tmp_path):
    with pytest.raises(petkit.ConfigError, match="trains an AdaptedModel"):
        petkit.hf.Trainer(model=tiny_llama(), args=args(tmp_path))


def test_gradient_accumulation_gives_the_loss_and_step_of_one_big_batch(tmp_path):
    # micro-batches of 2 rows with 0, 5, 2, 7 unlabelled positions: the mean of per-micro-batch means
    # differs from the mean over every labelled token, which is what one batch of 4 computes
    data = Tokens(unlabelled=(0, 5, 2, 7))
    runs = {}
    for name, (batch, steps) in {"big": (4, 1), "accumulated": (2, 2)}.items():
        am = adapted()
        trainer = petkit.hf.Trainer(model=am, args=args(tmp_path / name, per_device_train_batch_size=batch,
                                                        gradient_accumulation_steps=steps, max_steps=1, optim="sgd",
                                                        learning_rate=1.0, logging_steps=1), train_dataset=data)
        trainer.train()
        runs[name] = params(am), trainer.state.log_history[0]["loss"]
    assert_same(runs["accumulated"][0], runs["big"][0], rtol=1e-5, atol=1e-6)
    assert runs["accumulated"][1] == pytest.approx(runs["big"][1], rel=1e-5)


# -- gradient checkpointing --------------------------------------------------------------------------

@pytest.mark.parametrize("config", [LORA, petkit.PromptTuningConfig(num_virtual_tokens=3),
                                    petkit.PrefixTuningConfig(num_virtual_tokens=3)], ids=["lora", "prompt", "prefix"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(config):
    results = []
    for checkpointing in (False, True):
        am = adapted(config).double()
        perturb(am)  # away from init, so every gradient is non-trivial
        if checkpointing:
            am.gradient_checkpointing_enable()  # the wrapped model's, through the wrapper
            assert am.base.is_activation_checkpointing
        am.train()
        loss = am(**tiny_batch(am.base, seed=2)).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in am.named_parameters() if p.requires_grad}))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-12, atol=0)
    assert grads and all(g.abs().sum() > 0 for g in grads.values())
    assert_same(grads_ckpt, grads, rtol=1e-10, atol=1e-12)


def test_mixed_adapter_batches_refuse_to_train_under_gradient_checkpointing():
    am = adapted()
    am.add(petkit.LoraConfig(r=2, targets=["attn.q"]), "other")
    am.gradient_checkpointing_enable()
    am.train()
    batch = tiny_batch(am.base)
    with pytest.raises(petkit.StateError, match="gradient checkpointing"):
        am(**batch, adapter_names=["default", "other", "default", None])
    with torch.no_grad():  # inference recomputes nothing: allowed
        am(**batch, adapter_names=["default", "other", "default", None])


# -- TRL's SFTTrainer --------------------------------------------------------------------------------

def sft_config(out: Path, **overrides):
    trl = pytest.importorskip("trl")
    kw = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2, save_strategy="no",
              report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True,
              dataloader_num_workers=0, max_length=32, seed=0)
    return trl.SFTConfig(**{**kw, **overrides})


def text_rows(n: int = 16):
    datasets = pytest.importorskip("datasets")
    g = torch.Generator().manual_seed(0)
    rows = [" ".join(f"w{i}" for i in torch.randint(4, VOCAB_SIZE, (8,), generator=g).tolist()) for _ in range(n)]
    return datasets.Dataset.from_list([{"text": r} for r in rows])


def test_sft_trainer_trains_lora_and_its_checkpoint_loads_in_petkit(tmp_path):
    am = adapted()
    before = params(am)
    trainer = petkit.hf.SFTTrainer(model=am, args=sft_config(tmp_path, save_strategy="steps", save_steps=4),
                                   train_dataset=text_rows(), processing_class=tokenizer())
    trainer.train()
    after = params(am)
    assert all(not torch.equal(before[k], after[k]) for k in after if k.endswith(".B"))
    checkpoint = tmp_path / "checkpoint-4"
    assert not (checkpoint / "model.safetensors").exists()
    back = petkit.load(tiny_llama(), checkpoint)
    ids = Tokens()[0]["input_ids"][None]
    am.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, am(input_ids=ids).logits)


@pytest.mark.parametrize("config", [LORA, petkit.PromptTuningConfig(num_virtual_tokens=3),
                                    petkit.PrefixTuningConfig(num_virtual_tokens=3)], ids=["lora", "prompt", "prefix"])
def test_sft_trainer_loss_is_the_adapted_models_own_loss(tmp_path, config):
    # TRL's fused LM head must see what petkit's forward does (prompt tokens in front, prefixes in attention)
    am = adapted(config)
    perturb(am)
    petkit.hf.SFTTrainer(model=am, args=sft_config(tmp_path), train_dataset=text_rows(), processing_class=tokenizer())
    batch = tiny_batch(am.base, seed=3)
    with torch.no_grad():
        fused = am(**batch, fused_lm_head=True).loss
        own = am(**batch).loss
        with am.disabled():
            plain = am(**batch).loss
    torch.testing.assert_close(fused, own, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(own, plain)  # the adapter did take part


def test_sft_trainer_runs_compositions_and_mixed_adapter_batches(tmp_path):
    am = adapted()
    am.add(petkit.LoraConfig(r=2, targets=["attn.q"]), "other")
    perturb(am)
    am.set_active(petkit.BatchSplit("default", "other", sizes=[2, 2]))
    petkit.hf.SFTTrainer(model=am, args=sft_config(tmp_path), train_dataset=text_rows(), processing_class=tokenizer())
    batch = tiny_batch(am.base, seed=3)
    names = ["other", "default", "other", None]
    with torch.no_grad():
        fused, own = am(**batch, fused_lm_head=True).loss, am(**batch).loss
        am.set_active("default")
        one = am(**batch).loss
        routed, routed_own = (am(**batch, adapter_names=names, fused_lm_head=True).loss,
                              am(**batch, adapter_names=names).loss)
    torch.testing.assert_close(fused, own, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(routed, routed_own, rtol=1e-5, atol=1e-6)  # a plain trl.SFTTrainer ignores the names
    assert not torch.allclose(own, one) and not torch.allclose(routed, one)


def test_sft_trainer_refuses_what_the_fused_lm_head_would_skip(tmp_path):
    on_head = adapted(petkit.LoraConfig(r=2, targets=["lm_head"]))
    with pytest.raises(petkit.ConfigError, match="output head"):
        petkit.hf.SFTTrainer(model=on_head, args=sft_config(tmp_path), train_dataset=text_rows(),
                             processing_class=tokenizer())
    side = adapted(petkit.LstConfig())
    with pytest.raises(petkit.ConfigError, match="only prompt and prefix tuning"):
        petkit.hf.SFTTrainer(model=side, args=sft_config(tmp_path), train_dataset=text_rows(),
                             processing_class=tokenizer())


def test_sft_trainer_without_trl_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError
    monkeypatch.delitem(sys.modules, "petkit.hf.sft", raising=False)
    with pytest.raises(ImportError, match=r"petkit\[trl\]"):
        petkit.hf.SFTTrainer
