"""HST beyond the generic matrix: its own head and loss, where gradients go, the bridge/interpolation
order, bad input."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.testing import TINY_MODELS, tiny_batch


def adapted(**kw):
    base = TINY_MODELS["vit"](seed=0)
    config = petkit.HstConfig(**{"dims": [8, 16], "heads": [2, 4], **kw})
    return petkit.adapt(base, config), tiny_batch(base, seed=1)


def test_logits_come_from_the_side_head_and_the_loss_from_them():
    am, batch = adapted()
    am.eval()
    with torch.no_grad():
        out = am(**batch)
        torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, batch["labels"]))
        am.base.classifier.weight.add_(1.0)  # the ViT's own head is not read
        torch.testing.assert_close(am(**batch).logits, out.logits)


def test_gradients_reach_meta_tokens_through_the_frozen_vit():
    am, batch = adapted()
    am.train()
    am(**batch).loss.backward()
    delta = am.model_deltas["default"]
    assert delta.meta.grad is not None and (delta.meta.grad.abs().sum(dim=1) > 0).all()
    assert all(p.grad is not None for p in delta.parameters())
    assert all(p.grad is None for p in am.base.parameters() if not p.requires_grad)


def test_meta_token_is_read_by_each_layer_and_removed_after():
    am, batch = adapted()
    seen = []
    handles = [layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])) for layer in am.base.vit.layers]
    with torch.no_grad():
        am(**batch)
    for h in handles:
        h.remove()
    assert seen == [18, 18]  # [meta, CLS, 16 patches] at both layers


def test_bridge_before_interpolation_equals_after():
    am, _ = adapted()
    bridge = am.model_deltas["default"].bridges[0]
    patches = torch.randn(2, 16, 32)
    with torch.no_grad():
        early = torch.nn.functional.interpolate(bridge(patches).transpose(1, 2).reshape(2, 8, 4, 4), size=(7, 7),
                                                mode="bilinear", align_corners=False)
        grid = torch.nn.functional.interpolate(patches.transpose(1, 2).reshape(2, 32, 4, 4), size=(7, 7),
                                               mode="bilinear", align_corners=False)
        late = bridge(grid.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, 8, 7, 7)
    torch.testing.assert_close(early, late, atol=1e-5, rtol=1e-5)


def test_text_models_are_refused_with_the_alternative():
    with pytest.raises(petkit.TargetError, match="HST is a side network for ViT-style image classifiers.*LST or SHERL"):
        petkit.adapt(TINY_MODELS["bert"](seed=0), petkit.HstConfig())


def test_stages_that_do_not_share_the_layers_evenly_name_the_fix():
    with pytest.raises(petkit.ConfigError, match=r"3 stages cannot share the ViT's 2 layers evenly; give dims and "
                                                 r"heads \[1, 2\] entries"):
        adapted(dims=[8, 8, 8], heads=[1, 1, 1])


@pytest.mark.parametrize("kw,message", [
    ({"dims": []}, "dims must be a list of positive stage widths"),
    ({"dims": [8, 16], "heads": [3, 4]}, "heads must give one head count per stage that divides its width"),
    ({"dims": [8], "heads": [2, 2]}, "heads must give one head count per stage"),
])
def test_bad_configs(kw, message):
    with pytest.raises(petkit.ConfigError, match=message):
        petkit.HstConfig(**kw)
