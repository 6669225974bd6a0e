"""LoRAPrune's structured pruning during LoRA training: units, masks, schedule."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.core.errors import ConfigError
from petkit.core.layer import weight_oi
from petkit.methods.lora import LoraConfig
from petkit.prune.structured import StructuredPruner, cubic_ratio, find_blocks
from petkit.testing import tiny_batch, tiny_bert, tiny_llama

ALL = ["attn.q", "attn.k", "attn.v", "attn.out", "mlp.in", "mlp.out"]


def test_blocks_are_found_by_role_with_their_head_layout():
    llama = find_blocks(tiny_llama())
    assert len(llama) == 2 and llama[0].q.endswith("layers.0.self_attn.q_proj")
    assert (llama[0].heads, llama[0].kv_heads, llama[0].head_dim, llama[0].channels) == (4, 2, 8, 64)
    assert sorted(p.split(".")[-1] for p in llama[0].ffn_in) == ["gate_proj", "up_proj"]
    bert = find_blocks(tiny_bert())
    assert (bert[1].heads, bert[1].kv_heads, bert[1].head_dim) == (2, 2, 16)
    assert bert[1].ffn_out.endswith("layer.1.output.dense")


def test_the_cubic_ramp():
    assert cubic_ratio(5, 100, 0.5) == 0.0 and cubic_ratio(10, 100, 0.5) == 0.0
    assert cubic_ratio(90, 100, 0.5) == 0.5 and cubic_ratio(100, 100, 0.5) == 0.5
    assert cubic_ratio(50, 100, 0.5) == pytest.approx(0.5 - 0.5 * (1 - 40 / 80) ** 3)
    values = [cubic_ratio(t, 100, 0.5) for t in range(101)]
    assert values == sorted(values)


def test_a_masked_unit_computes_what_removing_its_rows_and_columns_would():
    """Masking a head or channel = zeroing its columns of the output projection (what physical removal
    leaves). Catches masking q alone: a head with zero queries still attends, uniformly."""
    model = tiny_llama().eval()
    batch = tiny_batch(model, seed=1)
    batch.pop("labels")
    pruner = StructuredPruner(model, 0.5, 100, criterion="magnitude", exempt_first=0, exempt_last=False)
    pruner.head_mask[0][1] = False
    pruner.channel_mask[1][[3, 7]] = False
    with torch.no_grad():
        masked = model(**batch).logits
        pruner.release()
        b0, b1 = pruner.blocks
        weight_oi(model.get_submodule(b0.out))[:, 8:16] = 0
        weight_oi(model.get_submodule(b1.ffn_out))[:, [3, 7]] = 0
        assert torch.allclose(masked, model(**batch).logits, atol=1e-6)


def test_pruning_during_lora_training_reaches_the_target_and_never_revives_a_unit():
    torch.manual_seed(0)
    model = tiny_llama()
    am = petkit.adapt(model, LoraConfig(r=4, alpha=8, targets=ALL))
    optimizer = torch.optim.AdamW(am.trainable_parameters(), lr=1e-2)
    pruner = StructuredPruner(am, 0.5, 30, every=5, exempt_first=0, exempt_last=False)
    pruner.attach(optimizer)
    history = []
    for step in range(30):
        am(**tiny_batch(model, batch_size=8, seed=step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append([m.clone() for m in pruner.head_mask + pruner.channel_mask])
    assert pruner.pruned_share() == {"heads": 0.5, "channels": 0.5}
    for before, after in zip(history, history[1:]):
        assert all(torch.all(a <= b) for a, b in zip(after, before))  # a pruned unit stays pruned
    for mask, b in zip(pruner.head_mask, pruner.blocks):  # grouped-query: every kv head keeps as many
        assert set(mask.view(b.kv_heads, -1).sum(1).tolist()) == {1}
    assert any(not torch.equal(h[0], history[-1][0]) for h in history[:10])  # it pruned along the way


def test_exempt_layers_and_bad_settings():
    pruner = StructuredPruner(tiny_llama(), 0.5, 10, criterion="random", exempt_first=0.5, exempt_last=True)
    assert pruner.prunable == []
    with pytest.raises(ConfigError, match="ratio must be in"):
        StructuredPruner(tiny_llama(), 1.0, 10)
    with pytest.raises(ConfigError, match="criterion must be one of"):
        StructuredPruner(tiny_llama(), 0.5, 10, criterion="taylor")
    model = tiny_llama()
    pruner = StructuredPruner(model, 0.5, 10, exempt_first=0, exempt_last=False)
    model(**tiny_batch(model)).loss.backward()
    with pytest.raises(ConfigError, match="needs a LoRA adapter"):
        pruner.step()


@pytest.mark.parametrize("build", [tiny_llama, tiny_bert])
def test_removing_the_units_gives_a_smaller_model_that_computes_the_same_saves_and_generates(tmp_path, build):
    """Grouped-query Llama (query heads out, k/v kept) and BERT (whole heads out). Catches slicing rows
    where columns go, a kv-group count left stale, or a saved structure that reloads at the old shapes."""
    from petkit.prune.remove import load_structured, remove_units, save_structured
    torch.manual_seed(0)
    model = build().eval()
    am = petkit.adapt(model, LoraConfig(r=4, alpha=8, targets=ALL))
    for p in am.trainable_parameters():  # a non-zero adapter, to be merged before slicing
        torch.nn.init.normal_(p, std=0.05)
    pruner = StructuredPruner(am, 0.5, 10, criterion="magnitude", exempt_first=0, exempt_last=False)
    pruner.step()
    pruner.prune_to(0.5)
    batch = tiny_batch(model, seed=3)
    batch.pop("labels")
    with torch.no_grad():
        masked = am(**batch).logits
    plain = am.merge_and_unload()
    before = sum(p.numel() for p in plain.parameters())
    record = remove_units(plain, pruner)
    assert sum(p.numel() for p in plain.parameters()) < before
    with torch.no_grad():
        assert torch.allclose(plain(**batch).logits, masked, atol=1e-5)
    save_structured(plain, record, tmp_path / "small")
    loaded = load_structured(tmp_path / "small")
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, masked, atol=1e-5)
    if build is tiny_llama:
        out = loaded.generate(batch["input_ids"][:1, :4], max_new_tokens=5, do_sample=False)
        assert out.shape[1] == 9
        assert loaded.model.layers[0].self_attn.num_key_value_groups == 1


def test_loraprune_trains_prunes_and_returns_the_smaller_model():
    from petkit.data.batches import lm_blocks
    from petkit.prune.loraprune import PAPER_LORA, loraprune
    from petkit.testing import tiny_chat_tokenizer
    from petkit.train import TrainConfig
    torch.manual_seed(0)
    model = tiny_llama()
    before = sum(p.numel() for p in model.parameters())
    data = lm_blocks(tiny_chat_tokenizer(), "the cat sat on the mat and the dog sat on the log. " * 40, 16)
    cfg = TrainConfig(lr=5e-3, epochs=2, batch_size=8, seed=0)
    small, record = loraprune(model, data, cfg, ratio=0.5, every=2, exempt_first=0, exempt_last=False,
                              lora={**PAPER_LORA, "dropout": 0.0}, progress=False)
    assert sum(p.numel() for p in small.parameters()) < before
    assert record["modules"] and small.model.layers[1].mlp.down_proj.in_features == 32
    assert small.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False).shape[1] == 6
    with pytest.raises(ConfigError, match="criterion='grad'"):
        loraprune(tiny_llama(), data, cfg, criterion="grad")
    with pytest.raises(ConfigError, match="cannot resume"):
        loraprune(tiny_llama(), data, cfg.__class__(output_dir="x"))


def test_petkit_prune_lora_writes_a_smaller_model(tmp_path, capsys):
    from petkit.cli.main import main
    from petkit.prune.remove import load_structured
    from petkit.testing import tiny_chat_tokenizer
    folder = tmp_path / "model"
    tiny_llama().save_pretrained(folder)
    tiny_chat_tokenizer().save_pretrained(folder)
    (tmp_path / "text.txt").write_text("\n\n".join(f"the cat number {i} sat on the mat." for i in range(200)))
    args = ["prune", "lora", "--model", str(folder), "--data", str(tmp_path / "text.txt"), "--max-length", "16",
            "-t", "epochs=1", "-t", "batch_size=8", "--output", str(tmp_path / "small"), "--no-progress"]
    assert main(args) == 0
    small = load_structured(tmp_path / "small")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in tiny_llama().parameters())
    assert "test_perplexity_after" in (tmp_path / "small" / "result.json").read_text()
    assert main(args[:-3] + ["--ratio", "1.2", "--output", str(tmp_path / "x")]) == 2
    assert "ratio must be in [0, 1)" in capsys.readouterr().err
