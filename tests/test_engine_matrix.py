"""The generic test matrix: every registered method through the same checks on tiny random models.

For each (method config, tiny model): identity (or the method's own init condition) at init, loss
falls when training, only the method's parameters change, save -> load gives identical outputs,
merged == unmerged output, unmerge restores the base, and the trainable count matches a formula.
"""

from __future__ import annotations

import pytest
import torch
import petkit
from method_cases import EXTRA_CASES, EXTRA_FORMULAS, INIT_CHECKS, TRAIN_LRS
from method_cases._shapes import io_features, method_layers, out_features, lora_count
from petkit.testing import TINY_MODELS, tiny_batch


FORMULAS = {  # trainable parameters of each method, from the layer shapes alone
    "lora": lora_count,
    "dora": lambda am, n: lora_count(am, n) + sum(io_features(b)[1] for _, b, _ in method_layers(am, n)),
    "ia3": lambda am, n: sum(io_features(b)[0 if d.feedforward else 1] for _, b, d in method_layers(am, n)),
    "bitfit": lambda am, n: sum(out_features(b) for _, b, _ in method_layers(am, n)),
    "layernorm": lambda am, n: sum(p.numel() for _, b, _ in method_layers(am, n) for p in b.parameters(recurse=False)),
    "probe": lambda am, n: 0,
    "full": lambda am, n: sum(p.numel() for p in am.base.parameters()),
    **EXTRA_FORMULAS,
}

EMBEDDING = {"bert": "word_embeddings", "gpt2": "wte", "llama": "embed_tokens", "t5": "embed_tokens", "vit": None}

CASES = {
    "lora": lambda fam: petkit.LoraConfig(r=4, alpha=8, targets="all-linear"),
    "lora-rs-patterns": lambda fam: petkit.LoraConfig(
        r=4, alpha=8, rslora=True, targets=["attn.qkv", "mlp.out"], rank_pattern={"mlp.out": 2}, alpha_pattern={"mlp.out": 3}),
    "lora-gaussian-dropout": lambda fam: petkit.LoraConfig(r=2, alpha=4, dropout=0.1, init="gaussian", targets=["mlp.in"]),
    "pissa": lambda fam: petkit.LoraConfig(r=2, alpha=2, init="pissa", targets=["attn.qkv", "attn.out"]),
    "lora-embedding": lambda fam: EMBEDDING[fam] and petkit.LoraConfig(r=3, alpha=6, targets=[EMBEDDING[fam]]),
    "lora-conv2d": lambda fam: fam == "vit" and petkit.LoraConfig(r=2, alpha=4, targets=["patch_embeddings.projection"]),
    "dora": lambda fam: petkit.DoraConfig(r=4, alpha=8, targets="all-linear"),
    "ia3": lambda fam: petkit.IA3Config(),
    "bitfit": lambda fam: petkit.BitFitConfig(targets="all-linear" if fam in ("llama", "t5") else ()),
    "layernorm": lambda fam: petkit.LayerNormConfig(),
    "probe": lambda fam: fam in ("bert", "vit") and petkit.ProbeConfig(),
    "full": lambda fam: petkit.FullConfig(),
    **EXTRA_CASES,
}

GRID = [(case, fam) for case in CASES for fam in TINY_MODELS]


def _loss(model, batch):
    return model(**batch).loss


def _outputs(model, batch):
    with torch.no_grad():  # labels stay in: T5 builds its decoder inputs from them
        return model(**batch).logits


def identity_at_init(y_adapted, y_base):
    torch.testing.assert_close(y_adapted, y_base, atol=1e-5, rtol=1e-5)


def test_every_registered_method_is_in_the_matrix():
    registered = {m.name for m in petkit.all_methods()}
    covered = {cfg.method for make in CASES.values() for fam in TINY_MODELS if (cfg := make(fam))}
    assert registered <= covered, f"methods missing from the matrix: {registered - covered}"
    assert registered <= set(FORMULAS), f"methods without a parameter-count formula: {registered - set(FORMULAS)}"


@pytest.mark.parametrize("case,family", GRID, ids=[f"{c}-{f}" for c, f in GRID])
def test_method_matrix(case, family, tmp_path):
    config = CASES[case](family)
    if not config:
        pytest.skip(f"{case} does not apply to {family}")
    base = TINY_MODELS[family](seed=0)
    batch = tiny_batch(base, seed=1)
    y_base = _outputs(base, batch)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}

    am = petkit.adapt(base, config)
    method = am.method_of("default")
    # init condition: the method's own (most methods start exactly at the base model)
    INIT_CHECKS.get(case, identity_at_init)(_outputs(am, batch), y_base)

    # trainable count == formula (+ the task head when it is trained)
    trainable = sum(p.numel() for p in am.trainable_parameters())
    head = am.num_parameters("default") - am.num_parameters("default", include_head=False)
    expected = FORMULAS[method.name](am, "default") + (0 if am.is_selection("default") else head)
    assert trainable == expected

    # train: loss falls, only the adapter's parameters move
    am.train()
    opt = torch.optim.AdamW(am.trainable_parameters(), lr=TRAIN_LRS.get(case, 1e-2))
    am.hook_optimizer(opt)  # once-per-step gradient terms (SaRA's nuclear norm), as a user's own loop does
    losses = []
    torch.manual_seed(0)
    for _ in range(12):
        loss = _loss(am, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    am.eval()
    assert losses[-1] < losses[0] - 1e-3, losses
    own = {id(p) for p in am.trainable_parameters()}
    for name, p in am.base.named_parameters():
        clean = name.replace(".base_layer.", ".")
        if id(p) in own or ".deltas." in name:
            continue
        torch.testing.assert_close(p, base_state[clean], atol=0, rtol=0, msg=f"{clean} changed")
    y_trained = _outputs(am, batch)
    assert not torch.allclose(y_trained, y_base, atol=1e-4), "training did not change the outputs"

    # save -> load onto a fresh copy of the base: identical outputs
    am.save(tmp_path / "a")
    fresh = TINY_MODELS[family](seed=0)
    loaded = petkit.load(fresh, tmp_path / "a")
    torch.testing.assert_close(_outputs(loaded, batch), y_trained, atol=1e-6, rtol=1e-6)

    # merge == unmerged; unmerge restores the base weights
    tied = case == "lora-embedding" and family in ("gpt2", "llama", "t5")
    if tied:  # the embedding is tied to the LM head: merging would change both, so it must refuse
        with pytest.raises(petkit.StateError, match="tied"):
            am.merge()
    elif not method.mergeable and not am.is_selection("default"):
        with pytest.raises(petkit.StateError, match="cannot be merged"):
            am.merge()
        assert am.state.merged == []
        torch.testing.assert_close(_outputs(am, batch), y_trained, atol=1e-6, rtol=1e-6)
    elif not am.is_selection("default"):
        am.merge()
        torch.testing.assert_close(_outputs(am, batch), y_trained, atol=1e-5, rtol=1e-4)
        am.unmerge()
        torch.testing.assert_close(_outputs(am, batch), y_trained, atol=1e-5, rtol=1e-4)
        for name, p in am.base.named_parameters():
            if ".deltas." not in name:
                torch.testing.assert_close(p, base_state[name.replace(".base_layer.", ".")], atol=1e-5, rtol=1e-5)
        with am.disabled():
            torch.testing.assert_close(_outputs(am, batch), y_base, atol=1e-5, rtol=1e-5)
        plain = am.merge_and_unload()
        assert not any(hasattr(m, "deltas") for m in plain.modules())
        torch.testing.assert_close(_outputs(plain, batch), y_trained, atol=1e-5, rtol=1e-4)
