"""The generic checks every (method config, tiny model) pair goes through: shared by the method matrix
(test_engine_matrix.py: every method on five families) and the architecture matrix
(test_architectures.py: LoRA, DoRA and IA³ on 32 architectures)."""

from __future__ import annotations

import pytest
import torch

import petkit
from method_cases import EXTRA_FORMULAS
from method_cases._shapes import io_features, lora_count, method_layers, out_features

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


def outputs(model, batch):
    with torch.no_grad():  # labels stay in: T5 builds its decoder inputs from them
        return model(**batch).logits


def identity_at_init(y_adapted, y_base):
    torch.testing.assert_close(y_adapted, y_base, atol=1e-5, rtol=1e-5)


def check_method(config, build, batch, tmp_path, init_check=identity_at_init, lr: float = 1e-2, tied: bool = False):
    """Init condition, trainable count == formula, loss falls and only the adapter moves, save -> load
    onto a fresh base (build()) gives identical outputs, merge == unmerged and unmerge restores the base."""
    base = build()
    y_base = outputs(base, batch)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}

    am = petkit.adapt(base, config)
    method = am.method_of("default")
    init_check(outputs(am, batch), y_base)

    # trainable count == formula (+ the task head when it is trained)
    trainable = sum(p.numel() for p in am.trainable_parameters())
    head = am.num_parameters("default") - am.num_parameters("default", include_head=False)
    expected = FORMULAS[method.name](am, "default") + (0 if am.is_selection("default") else head)
    assert trainable == expected

    # train: loss falls, only the adapter's parameters move
    am.train()
    opt = torch.optim.AdamW(am.trainable_parameters(), lr=lr)
    am.hook_optimizer(opt)  # once-per-step gradient terms (SaRA's nuclear norm), as a user's own loop does
    losses = []
    torch.manual_seed(0)
    for _ in range(12):
        loss = am(**batch).loss
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
    y_trained = outputs(am, batch)
    assert not torch.allclose(y_trained, y_base, atol=1e-4), "training did not change the outputs"

    # save -> load onto a fresh copy of the base: identical outputs
    am.save(tmp_path / "a")
    loaded = petkit.load(build(), tmp_path / "a")
    torch.testing.assert_close(outputs(loaded, batch), y_trained, atol=1e-6, rtol=1e-6)

    # merge == unmerged; unmerge restores the base weights
    if tied:  # the embedding is tied to the LM head: merging would change both, so it must refuse
        with pytest.raises(petkit.StateError, match="tied"):
            am.merge()
    elif not method.mergeable and not am.is_selection("default"):
        with pytest.raises(petkit.StateError, match="cannot be merged"):
            am.merge()
        assert am.state.merged == []
        torch.testing.assert_close(outputs(am, batch), y_trained, atol=1e-6, rtol=1e-6)
    elif not am.is_selection("default"):
        am.merge()
        torch.testing.assert_close(outputs(am, batch), y_trained, atol=1e-5, rtol=1e-4)
        am.unmerge()
        torch.testing.assert_close(outputs(am, batch), y_trained, atol=1e-5, rtol=1e-4)
        for name, p in am.base.named_parameters():
            if ".deltas." not in name:
                torch.testing.assert_close(p, base_state[name.replace(".base_layer.", ".")], atol=1e-5, rtol=1e-5)
        with am.disabled():
            torch.testing.assert_close(outputs(am, batch), y_base, atol=1e-5, rtol=1e-5)
        plain = am.merge_and_unload()
        assert not any(hasattr(m, "deltas") for m in plain.modules())
        torch.testing.assert_close(outputs(plain, batch), y_trained, atol=1e-5, rtol=1e-4)
