"""HST beyond the generic matrix: its own head and loss, where gradients go, the bridge/interpolation
order, bad input."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.testing import TINY_MODELS, tiny_batch


def adapted(layers=2, **kw):
    base = TINY_MODELS["vit"](seed=0, layers=layers)
    config = petkit.HstConfig(**{"dims": [8, 16], "heads": [2, 4], **kw})
    return petkit.adapt(base, config), tiny_batch(base, seed=1)


def side_block_by_hand(block, x, feature, meta, heads):
    """The spec's side block: kv = [LN(m) ; mean_tokens(F)], x += CrossAttn(q = LN(x), kv), x += F,
    x += MLP(LN(x)); the attention written out head by head."""
    kv = torch.stack([block.meta_norm(meta), feature.mean(dim=1)], dim=1)           # b × 2 × w
    wq, wk, wv = block.attend.in_proj_weight.chunk(3)
    bq, bk, bv = block.attend.in_proj_bias.chunk(3)
    q, k, v = block.norm1(x) @ wq.T + bq, kv @ wk.T + bk, kv @ wv.T + bv
    width = x.shape[-1] // heads
    out = []
    for h in range(heads):
        part = slice(h * width, (h + 1) * width)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / width ** 0.5
        out.append(scores.softmax(dim=-1) @ v[..., part])
    x = x + torch.cat(out, dim=-1) @ block.attend.out_proj.weight.T + block.attend.out_proj.bias
    x = x + feature
    return x + block.mlp[2](torch.nn.functional.gelu(block.mlp[0](block.norm2(x))))


def randomise_norm_statistics(delta):
    """Eval-mode batch norms with non-trivial running statistics, so the reference must apply them."""
    with torch.no_grad():
        for norm in (delta.stem[1], delta.head[0]):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)


def test_side_block_equals_the_spec_by_hand():
    am, _ = adapted()
    block = am.model_deltas["default"].blocks[1]  # stage 2: width 16, 4 heads
    torch.manual_seed(0)
    x, feature, meta = torch.randn(2, 4, 16), torch.randn(2, 4, 16), torch.randn(2, 16)
    with torch.no_grad():
        for norm in (block.meta_norm, block.norm1, block.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
        torch.testing.assert_close(block(x, feature, meta), side_block_by_hand(block, x, feature, meta, 4),
                                   atol=1e-5, rtol=1e-5)


def test_logits_equal_the_spec_step_by_step_on_a_four_layer_vit():
    """Meta token m_l in front of ViT layer l and out after it; side block j of stage i reads layer
    l = 2i + j: F = B_i(bilinear(patch tokens of l → H_i × W_i)) (interpolated first, as the spec
    writes it), m = B_i(m_l^out); after the last stage mean → BN (no affine) → Linear."""
    am, batch = adapted(layers=4)
    am.eval()
    delta, vit = am.model_deltas["default"], am.base.vit
    randomise_norm_statistics(delta)
    pixels = batch["pixel_values"]
    with torch.no_grad():
        logits = am(**batch).logits
        with am.disabled():
            hidden, metas, patches = vit.embeddings(pixels), [], []
            for l, layer in enumerate(vit.layers):
                out = layer(torch.cat([delta.meta[l].expand(len(pixels), 1, -1), hidden], dim=1))
                metas.append(out[:, 0])
                patches.append(out[:, 2:].transpose(1, 2).reshape(len(pixels), 32, 4, 4))  # after meta and CLS
                hidden = out[:, 1:]
        stem = delta.stem  # conv 3×3 s2 → BN (running statistics) → ReLU → conv 2×2 s2
        grid = torch.nn.functional.conv2d(pixels, stem[0].weight, stem[0].bias, stride=2, padding=1)
        grid = (grid - stem[1].running_mean[:, None, None]) / torch.sqrt(stem[1].running_var[:, None, None] + 1e-5)
        grid = grid * stem[1].weight[:, None, None] + stem[1].bias[:, None, None]
        grid = torch.nn.functional.conv2d(torch.relu(grid), stem[3].weight, stem[3].bias, stride=2)  # b × 8 × 4 × 4
        for stage, bridge in enumerate(delta.bridges):
            if stage:
                conv = delta.downs[stage - 1].conv(grid)
                grid = delta.downs[stage - 1].norm(conv.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            height, width = grid.shape[-2:]
            tokens = grid.flatten(2).transpose(1, 2)
            for j in range(2):
                l = 2 * stage + j
                vit_grid = torch.nn.functional.interpolate(patches[l], size=(height, width), mode="bilinear",
                                                           align_corners=False)
                feature = bridge(vit_grid.flatten(2).transpose(1, 2))
                tokens = side_block_by_hand(delta.blocks[l], tokens, feature, bridge(metas[l]), (2, 4)[stage])
            grid = tokens.transpose(1, 2).reshape(len(pixels), -1, height, width)
        norm, linear = delta.head
        pooled = (tokens.mean(dim=1) - norm.running_mean) / torch.sqrt(norm.running_var + 1e-5)
        expected = pooled @ linear.weight.T + linear.bias
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


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
