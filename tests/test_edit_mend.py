"""MEND (petkit.edit) on tiny random decoders: the hooks' rank-1 factors are the gradient, MEND at
init is one gradient step, padding never contributes, the sign lowers the edit loss, undo is exact,
saved editors reload, and bad input fails with one clear error."""

from __future__ import annotations

import pytest
import torch

from petkit.core.errors import AdapterFileError, ConfigError, StateError
from petkit.edit import (AppliedEdit, Edit, MendTrainConfig, build_editor, capture, default_targets, edited_logits,
                         linear_modules, load_editor, mend_deltas, meta_loss, rank_one_sum, save_editor,
                         synthetic_edits, train_editor)
from petkit.edit.apply import edit_batch
from petkit.edit.editor import RunningNorm
from petkit.edit.losses import target_nll
from petkit.edit.targets import as_stored
from petkit.testing import tiny_chat_tokenizer, tiny_gpt2, tiny_llama

EDITS = [Edit("the capital of veloria is", " paris", ("veloria's capital is",), ("bees make", "two plus two")),
         Edit("zan works as a", " nurse", ("the job of zan is",), ("the sun rises in the",))]


@pytest.fixture
def llama():
    return tiny_llama(), tiny_chat_tokenizer()


def _autograd_grads(model, targets, batch):
    """∂L/∂W by plain loss.backward() (independent of the hooks)."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target_nll(logits, batch["labels"]).backward()
    modules = linear_modules(model, targets)
    return {name: m.weight.grad.clone() for name, m in modules.items()}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hook_factors_sum_to_the_autograd_gradient(family):
    """Catches: δ taken from the wrong tensor, u/δ swapped, Conv1D's transposed layout, padding rows kept."""
    model = tiny_llama() if family == "llama" else tiny_gpt2()
    tok = tiny_chat_tokenizer()
    targets = default_targets(model, last_blocks=2)  # several layers, two blocks
    assert len(targets) >= 4
    batch = edit_batch(model, tok, EDITS)  # two rows of different length: the shorter one is padded
    assert (batch["attention_mask"] == 0).any()
    modules = linear_modules(model, targets)
    factors, grads = capture(model, modules, batch)
    reference = _autograd_grads(model, targets, batch)
    for name, module in modules.items():
        u, delta = factors[name]
        assert u.shape[0] == int(batch["attention_mask"].sum())  # one row per real token, none per pad
        assert torch.allclose(as_stored(module, rank_one_sum(u, delta)), reference[name], atol=1e-6, rtol=1e-5)
        assert torch.allclose(grads[name], reference[name], atol=1e-6, rtol=1e-5)


def test_mend_at_init_is_one_step_of_gradient_descent(llama):
    """The spec's unit test: identity editor, no normalisation, α = step size → ΔW = −α ∇W exactly.
    Catches: the code's plus sign, a missing α, an editor that is not the identity at init."""
    model, tok = llama
    alpha = 0.05
    editor = build_editor(model, last_blocks=2, rank=8, edit_lr=alpha, normalize=False)
    batch = edit_batch(model, tok, EDITS)
    reference = _autograd_grads(model, editor.config.targets, batch)
    deltas = mend_deltas(model, tok, editor, EDITS)
    for name, delta in deltas.items():
        assert torch.allclose(delta, -alpha * reference[name], atol=1e-7, rtol=1e-5), name


def test_padding_tokens_do_not_contribute_to_the_edit(llama):
    """With a non-linear editor (mode shifts away from zero), an edit padded by extra pad tokens gives
    the same ΔW as unpadded. Catches: hooks that keep padding rows (their u is not zero)."""
    model, tok = llama
    editor = build_editor(model, last_blocks=1, rank=4)
    with torch.no_grad():
        for transform in editor.transforms.values():
            for layer in transform.layers:
                layer.mode_shift.normal_(0, 0.1)
    modules = linear_modules(model, editor.config.targets)
    plain = edit_batch(model, tok, EDITS[:1])
    padded = {k: torch.nn.functional.pad(v, (0, 3), value=fill)
              for (k, v), fill in zip(plain.items(), (tok.pad_token_id, 0, -100))}
    editor.eval()
    a = editor.deltas(capture(model, modules, plain)[0])
    b = editor.deltas(capture(model, modules, padded)[0])
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


@pytest.mark.parametrize("sign, lower", [("paper", True), ("code", False)])
def test_sign_convention_the_paper_edit_lowers_the_edit_loss(llama, sign, lower):
    """Catches: a flipped sign (the released code's plus sign raises the loss of an untrained editor)."""
    model, tok = llama
    editor = build_editor(model, last_blocks=2, rank=4, edit_lr=0.05, sign=sign).eval()
    batch = edit_batch(model, tok, EDITS)
    with torch.no_grad():
        before = target_nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                            batch["labels"])
    deltas = mend_deltas(model, tok, editor, EDITS)
    with torch.no_grad():
        after = target_nll(edited_logits(model, deltas, batch), batch["labels"])
    assert (after < before - 1e-4) if lower else (after > before + 1e-4)


def test_undo_restores_the_exact_weights(llama):
    """Catches: undo by subtracting ΔW (float round-off), or a missed layer."""
    model, tok = llama
    original = {k: v.clone() for k, v in model.state_dict().items()}
    editor = build_editor(model, last_blocks=2, rank=4, edit_lr=0.1)
    applied = AppliedEdit(model, mend_deltas(model, tok, editor, EDITS))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, original[k])]
    assert len(changed) == len(editor.config.targets)
    applied.undo()
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    with pytest.raises(StateError):
        applied.undo()


def test_meta_training_lowers_the_meta_loss_and_moves_the_edit_rates(llama):
    """Catches: ΔW detached from the editor (nothing learns), α not in the optimizer."""
    model, tok = llama
    torch.manual_seed(0)
    edits = synthetic_edits(6, seed=0)
    editor = build_editor(model, last_blocks=2, rank=8, edit_lr=1e-3)
    config = MendTrainConfig(steps=30, lr=1e-3, lr_lr=1e-2, edits_per_step=2, seed=0)
    editor.eval()  # (meta_loss needs autograd on: it reads δ from a backward pass)
    start = sum(float(meta_loss(model, tok, editor, [e], config)["loss"].detach()) for e in edits)
    rates = editor.edit_lrs.detach().clone()
    history = train_editor(model, tok, editor, edits, config)
    end = sum(float(meta_loss(model, tok, editor, [e], config)["loss"].detach()) for e in edits)
    assert len(history) == 30 and end < 0.97 * start  # a random tiny model learns slowly: 2.77 → 2.58
    assert not torch.equal(rates, editor.edit_lrs.detach())
    assert all(p.grad is None for p in model.parameters())  # the base stays frozen


def test_running_norm_matches_the_statistics_of_all_rows():
    """Catches: a wrong Welford/Chan merge of batches."""
    norm = RunningNorm(3).train()
    rows = [torch.randn(n, 3) * 2 + 1 for n in (5, 1, 7)]
    for x in rows:
        norm(x)
    every = torch.cat(rows)
    assert torch.allclose(norm.mean, every.mean(0), atol=1e-5)
    assert torch.allclose(norm.m2 / (norm.count - 1), every.var(0), atol=1e-5)
    norm.eval()
    before = norm.count.clone()
    norm(torch.randn(4, 3))
    assert torch.equal(norm.count, before)  # statistics only update in training


def test_default_targets_are_the_last_blocks_mlp_layers(llama):
    model, _ = llama
    assert default_targets(model, last_blocks=1) == (
        "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj")
    assert default_targets(tiny_gpt2(), last_blocks=1) == ("transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj")


def test_saved_editor_reloads_and_refuses_other_shapes(llama, tmp_path):
    model, tok = llama
    editor = build_editor(model, last_blocks=1, rank=4)
    train_editor(model, tok, editor, synthetic_edits(3), MendTrainConfig(steps=2, lr=1e-3))
    save_editor(tmp_path / "ed", editor)
    loaded, record = load_editor(tmp_path / "ed", model)
    assert record["mend"]["rank"] == 4
    for name, delta in mend_deltas(model, tok, editor.eval(), EDITS).items():
        assert torch.equal(delta, mend_deltas(model, tok, loaded, EDITS)[name])
    from transformers import LlamaConfig, LlamaForCausalLM
    wider = LlamaForCausalLM(LlamaConfig(**{**model.config.to_dict(), "intermediate_size": 48}))
    with pytest.raises(AdapterFileError, match="other layer shapes"):
        load_editor(tmp_path / "ed", wider)


def test_bad_input_is_one_clear_error(llama):
    model, tok = llama
    with pytest.raises(ConfigError, match="no layer named 'model.layers.9.mlp.up_proj'"):
        build_editor(model, ["model.layers.9.mlp.up_proj"])
    with pytest.raises(ConfigError, match="linear layers; 'model.layers.0.mlp' is a"):
        build_editor(model, ["model.layers.0.mlp"])
    editor = build_editor(model, last_blocks=1, rank=4)
    with pytest.raises(ConfigError, match="cannot produce"):
        mend_deltas(model, tok, editor, [Edit("the price is", " 5 €")])  # € is not in the vocabulary
    with pytest.raises(ConfigError, match="no edits given"):
        mend_deltas(model, tok, editor, [])
    with pytest.raises(ConfigError, match="non-empty target"):
        Edit("the capital of x is", "")
    with pytest.raises(ConfigError, match="sign must be one of"):
        build_editor(model, last_blocks=1, sign="plus")


def test_cli_train_then_apply_and_save(tmp_path, capsys):
    from safetensors.torch import load_file

    from petkit.cli.main import main
    folder = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(folder)
    tiny_chat_tokenizer().save_pretrained(folder)
    assert main(["edit", "train", "--model", str(folder), "--generate", "6", "--steps", "3", "--rank", "4",
                 "--last-blocks", "1", "--output", str(tmp_path / "ed")]) == 0
    assert (tmp_path / "ed" / "editor.safetensors").is_file()
    assert main(["edit", "apply", "--model", str(folder), "--editor", str(tmp_path / "ed"), "--prompt",
                 "the capital of veloria is", "--target", " paris", "--output", str(tmp_path / "edited")]) == 0
    assert "→ ' paris': p " in capsys.readouterr().out
    before, after = load_file(folder / "model.safetensors"), load_file(tmp_path / "edited" / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"model.layers.1.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")}
    assert main(["edit", "apply", "--model", str(folder), "--editor", str(tmp_path / "ed"), "--prompt", "x"]) == 2
    assert "needs --prompt and --target" in capsys.readouterr().err
