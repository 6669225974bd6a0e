"""S² (petkit.models.s2) on a tiny random ViT and per-pixel models; its text analogue
(petkit.models.s2_text) on a tiny random BERT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from petkit.core.errors import ConfigError
from petkit.models.pooling import encode
from petkit.models.s2 import merge_chessboard, s2_forward, split_chessboard
from petkit.models.s2_text import s2_text_features, text_windows, window_embeddings
from petkit.testing import tiny_bert, tiny_tokenizer


@pytest.fixture(scope="module")
def vit():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, attn_implementation="eager")
    model = ViTModel(config, add_pooling_layer=False).eval()
    return lambda x: model(pixel_values=x).last_hidden_state


def test_scale_one_is_the_plain_backbone_bit_for_bit(vit):
    # Catches: a resize round trip or a token reshuffle at scale 1.
    images = torch.randn(2, 3, 16, 16)
    assert torch.equal(s2_forward(vit, images, [1], num_prefix_tokens=1), vit(images))


def test_vit_shapes_and_cls_averaged_over_tiles(vit):
    # Catches: channels not concatenated per scale, token grid not pooled back to the base size,
    # the CLS of scale 2 not the mean of its four tiles' CLS.
    images = torch.randn(2, 3, 16, 16)
    out = s2_forward(vit, images, [1, 2], num_prefix_tokens=1)
    assert out.shape == (2, 1 + 16, 64)
    big = F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False)
    tiles = vit(split_chessboard(big, 2))
    torch.testing.assert_close(out[:, 0, 32:], tiles[:, 0].reshape(4, 2, 32).mean(0))
    torch.testing.assert_close(out[:, :, :32], vit(images))
    split = s2_forward(vit, images, [1, 2], num_prefix_tokens=1, split_forward=True)
    torch.testing.assert_close(split, out)


def test_split_order_and_merge_inverts_it():
    # Catches: tiles stacked in (col, row) order, a transposed merge.
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float).reshape(2, 1, 6, 6)
    tiles = split_chessboard(x, 3)
    assert tiles.shape == (18, 1, 2, 2)
    assert torch.equal(tiles[(0 * 3 + 1) * 2 + 1], x[1, :, 0:2, 2:4])  # row 0, col 1, image 1
    assert torch.equal(tiles[(2 * 3 + 0) * 2 + 0], x[0, :, 4:6, 0:2])  # row 2, col 0, image 0
    assert torch.equal(merge_chessboard(tiles, 3), x)


def test_per_pixel_model_at_scale_two_equals_the_full_image_area_pooled():
    # Catches: any merge that puts a tile back in the wrong place (transposed, mirrored).
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, kernel_size=1)
    images = torch.randn(2, 3, 8, 8)
    out = s2_forward(conv, images, [1, 2], output_shape="bchw")
    big = F.interpolate(images, size=(16, 16), mode="bicubic", align_corners=False)
    expected = torch.cat([conv(images), F.avg_pool2d(conv(big), 2)], dim=1)
    torch.testing.assert_close(out, expected)
    assert out.shape == (2, 10, 8, 8)


def test_tile_size_smaller_than_the_image_and_output_at_another_scale():
    conv = torch.nn.Conv2d(3, 2, kernel_size=1)
    images = torch.randn(1, 3, 8, 8)
    out = s2_forward(conv, images, [1, 2], output_shape="bchw", tile_size=4, resize_output_to_idx=1)
    assert out.shape == (1, 4, 16, 16)


@pytest.mark.parametrize("kwargs, message", [
    ({"scales": [0]}, "integers >= 1"),
    ({"scales": [1, 1.5]}, "integers >= 1"),
    ({"scales": []}, "non-empty"),
    ({"scales": 2}, "non-empty list"),
    ({"scales": [1], "output_shape": "nchw"}, "output_shape"),
    ({"scales": [1, 2], "resize_output_to_idx": 2}, "resize_output_to_idx"),
])
def test_bad_scales_and_options_are_refused(vit, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        s2_forward(vit, torch.randn(1, 3, 16, 16), num_prefix_tokens=1, **kwargs)


def test_bad_images_are_refused(vit):
    conv = torch.nn.Conv2d(3, 2, kernel_size=1)
    with pytest.raises(ConfigError, match="square"):
        s2_forward(conv, torch.randn(1, 3, 16, 8), [1], output_shape="bchw")
    with pytest.raises(ConfigError, match="not divisible into 2 tiles"):
        s2_forward(conv, torch.randn(1, 3, 15, 15), [1], output_shape="bchw", tile_size=8)
    with pytest.raises(ConfigError, match="not a square grid"):
        s2_forward(vit, torch.randn(1, 3, 16, 16), [1])  # the CLS token left in the grid
    with pytest.raises(ConfigError, match="cannot be split"):
        split_chessboard(torch.randn(1, 1, 5, 5), 2)


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(seed=0).bert


def test_text_windows_cover_the_text_in_order():
    tokenizer = tiny_tokenizer()
    windows = text_windows(tokenizer, "abcdefghij", window=5, max_chunks=3)
    body = tokenizer("abcdefghij", add_special_tokens=False)["input_ids"]
    assert [w[1:-1] for w in windows] == [body[0:3], body[3:6], body[6:9]]
    assert all(w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id for w in windows)
    assert len(text_windows(tokenizer, "ab", window=5, max_chunks=3)) == 1


def test_window_embeddings_match_each_window_alone(bert):
    # Catches: batching by length that hands a window's embedding to the wrong text or slot.
    tokenizer = tiny_tokenizer()
    texts = ["abcdefghijklmnop", "xy", "the quick brown fox"]
    emb, present = window_embeddings(bert, tokenizer, texts, window=6, max_chunks=3, batch_size=2)
    assert present.tolist() == [[True, True, True], [True, False, False], [True, True, True]]
    for i, text in enumerate(texts):
        for j, ids in enumerate(text_windows(tokenizer, text, 6, 3)):
            ids = torch.tensor([ids])
            torch.testing.assert_close(emb[i, j], encode(bert, torch.ones_like(ids), input_ids=ids)[0])


def test_s2_text_features_pool_per_chunking_and_skip_missing_windows():
    # Catches: chunking 1 not being truncation, absent windows counted in the mean.
    windows = torch.arange(2 * 4 * 2, dtype=torch.float).reshape(2, 4, 2)
    present = torch.tensor([[True] * 4, [True, False, False, False]])
    feats = s2_text_features(windows, present, [1, 2, 4])
    assert feats.shape == (2, 6)
    torch.testing.assert_close(feats[:, :2], windows[:, 0])
    torch.testing.assert_close(feats[0, 2:4], windows[0, :2].mean(0))
    torch.testing.assert_close(feats[0, 4:], windows[0].mean(0))
    torch.testing.assert_close(feats[1, 4:], windows[1, 0])
    for bad in ([0], [5], [1, 2.0], []):
        with pytest.raises(ConfigError, match="chunkings"):
            s2_text_features(windows, present, bad)


def test_bad_window_settings_are_refused(bert):
    with pytest.raises(ConfigError, match="window"):
        window_embeddings(bert, tiny_tokenizer(), ["ab"], window=2)
    with pytest.raises(ConfigError, match="max_chunks"):
        window_embeddings(bert, tiny_tokenizer(), ["ab"], max_chunks=0)
