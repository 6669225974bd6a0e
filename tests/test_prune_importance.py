"""LoRAPrune's importance estimate from a LoRA's gradients."""

from __future__ import annotations

import torch

import petkit
from petkit.methods.lora import LoraConfig
from petkit.prune.importance import (
    group_scores,
    lora_gradient_estimate,
    lora_importance,
    true_importance,
)
from petkit.train.regression_metrics import spearman
from petkit.testing import tiny_batch, tiny_llama


def test_the_estimate_is_the_change_of_the_product_after_one_step():
    """Ĝ = BA − (B − G_B)(A − G_A). Catches a sign slip in the cross term."""
    class Factors:
        A, B = torch.randn(3, 7, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    f = Factors()
    (f.B @ f.A).sin().sum().backward()
    expected = f.B @ f.A - (f.B - f.B.grad) @ (f.A - f.A.grad)
    assert torch.allclose(lora_gradient_estimate(f), expected.detach(), atol=1e-5)


def test_rank_correlation():
    assert abs(spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 45])) - 1.0) < 1e-12
    assert abs(spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([4.0, 3, 2, 1])) + 1.0) < 1e-12
    assert abs(spearman(torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([2.0, 1, 4, 3, 5])) - 0.8) < 1e-12
    assert abs(spearman(torch.tensor([1.0, 1, 2, 2]), torch.tensor([1.0, 1, 2, 2])) - 1.0) < 1e-12


def test_lora_scores_of_channels_and_heads_rank_like_the_true_gradient_scores():
    """After a few LoRA steps (B no longer zero), per FFN channel and per head the LoRA-only estimate
    correlates with |∇W ⊙ W| far above what random scores do. Catches importance taken from the frozen
    weight alone, or groups summed along the wrong axis."""
    torch.manual_seed(0)
    model = tiny_llama()
    am = petkit.adapt(model, LoraConfig(r=8, alpha=16, targets=["attn.q", "mlp.up", "mlp.out"]))
    optimizer = torch.optim.AdamW(am.trainable_parameters(), lr=1e-2)
    for step in range(20):
        am(**tiny_batch(model, batch_size=8, seed=step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for _, layer, _ in am.layers("default"):
        layer.base_layer.weight.requires_grad_(True)
    am(**tiny_batch(model, batch_size=16, seq_len=16, seed=99)).loss.backward()
    ours, truth = [], []
    heads = model.config.num_attention_heads
    for path, layer, delta in am.layers("default"):
        est, real = lora_importance(delta, layer.base_layer), true_importance(layer.base_layer)
        if path.endswith("q_proj"):
            size = est.shape[0] // heads
            ours.append(group_scores(est, "rows", size)), truth.append(group_scores(real, "rows", size))
        elif path.endswith("up_proj"):
            ours.append(group_scores(est, "rows")), truth.append(group_scores(real, "rows"))
        else:  # down_proj: an FFN channel is a column
            ours.append(group_scores(est, "columns")), truth.append(group_scores(real, "columns"))
    rho = spearman(torch.cat([o / o.norm() for o in ours]), torch.cat([t / t.norm() for t in truth]))
    generator = torch.Generator().manual_seed(0)
    noise = [abs(spearman(torch.rand(len(t), generator=generator), torch.cat(truth))) for t in [torch.cat(truth)] * 20]
    assert rho > 0.5 and rho > 3 * max(noise), (rho, max(noise))
