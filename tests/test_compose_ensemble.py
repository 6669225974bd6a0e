"""Ensembles of adapters: one routed pass equals running each adapter alone; each fusion rule by hand."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.compose import dempster_shafer, ensemble, fuse, member_logits
from petkit.testing import TINY_MODELS, tiny_batch, tiny_lora_family


def members(n=3):
    return tiny_lora_family(n, prefix="m", scale=0.5)


def test_one_routed_pass_equals_each_adapter_alone():
    am, batch = members()
    logits = member_logits(am, ["m0", "m1", "m2"], batch)
    for k in range(3):
        am.set_active(f"m{k}")
        with torch.no_grad():
            torch.testing.assert_close(logits[k], am(**batch).logits, atol=1e-5, rtol=1e-5)


LOGITS = torch.tensor([[[2.0, 0.0], [0.0, 0.1]],     # member 0: confident on sample 0
                       [[0.5, 0.0], [0.0, 3.0]]])    # member 1: confident on sample 1


def test_rules_by_hand():
    torch.testing.assert_close(fuse(LOGITS, "mean_logits")[0], LOGITS.mean(0).softmax(-1))
    torch.testing.assert_close(fuse(LOGITS, "mean_probs")[0], LOGITS.softmax(-1).mean(0))
    torch.testing.assert_close(fuse(LOGITS, "max_softmax")[0], torch.stack([LOGITS[0, 0], LOGITS[1, 1]]).softmax(-1))
    energy = -torch.logsumexp(LOGITS, -1)  # lowest energy: member 0 on sample 0 (−2.13), member 1 on sample 1
    assert energy.argmin(0).tolist() == [0, 1]
    torch.testing.assert_close(fuse(LOGITS, "energy")[0], torch.stack([LOGITS[0, 0], LOGITS[1, 1]]).softmax(-1))


def test_dempster_shafer_by_hand_for_two_members():
    z1, z2 = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.5]])
    e1, e2 = torch.nn.functional.softplus(z1), torch.nn.functional.softplus(z2)
    s1, s2 = (e1 + 1).sum(), (e2 + 1).sum()
    b1, b2, u1, u2 = e1 / s1, e2 / s2, 2 / s1, 2 / s2
    conflict = b1[0, 0] * b2[0, 1] + b1[0, 1] * b2[0, 0]
    b = (b1 * b2 + b1 * u2 + b2 * u1) / (1 - conflict)
    u = u1 * u2 / (1 - conflict)
    probs, uncertainty = dempster_shafer(torch.stack([z1, z2]))
    torch.testing.assert_close(probs, b + u / 2)
    torch.testing.assert_close(uncertainty, u.reshape(1))
    assert probs.sum().item() == pytest.approx(1.0)
    assert uncertainty.item() < min(u1.item(), u2.item())  # agreeing evidence lowers the uncertainty


def test_ensemble_end_to_end_gives_probabilities():
    am, batch = members()
    for rule in ("mean_logits", "mean_probs", "max_softmax", "energy", "dempster_shafer"):
        probs, _ = ensemble(am, ["m0", "m1", "m2"], batch, rule)
        assert probs.shape == (4, 3)
        torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_bad_ensembles():
    am, batch = members(2)
    with pytest.raises(petkit.ConfigError, match="an ensemble needs at least two members"):
        ensemble(am, ["m0"], batch)
    with pytest.raises(petkit.ConfigError, match="ensemble rule must be one of"):
        ensemble(am, ["m0", "m1"], batch, "vote")
    lm = petkit.adapt(TINY_MODELS["gpt2"](seed=0), petkit.LoraConfig(r=2, targets=["c_attn"]), "a")
    lm.add(petkit.LoraConfig(r=2, targets=["c_attn"]), "b")
    with pytest.raises(petkit.ConfigError, match="ensembles fuse class logits"):
        ensemble(lm, ["a", "b"], tiny_batch(lm.base, seed=1))
