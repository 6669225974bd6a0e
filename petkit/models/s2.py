"""S² — Scaling on Scales (Shi et al., ECCV 2024; ``s2wrapper/core.py``): run a frozen vision backbone
on the same image at several scales and concatenate the features along channels. No parameters.

For each integer scale s the image is resized (bicubic) to s·S, split into n×n tiles of the tile size
(n = s when the tile is the input size S, the default), the tiles go through the backbone as one batch
stacked in (row, col, b) order, the tile feature maps are put back in place, and the merged map is
area-pooled to the feature size of the first scale. Prefix tokens (a ViT's CLS) are averaged over the
tiles of a scale. Output: B×N×(C·K) for token outputs, B×(C·K)×h×w for feature maps.

Differences from the released code: scales are integers ≥ 1 (the brief's scope; the released code also
takes fractional scales such as 0.5 for a native high-resolution input); at scale 1 with one tile the
image is passed as it is, without the bicubic round trip through fp32, so scale 1 is the plain backbone
bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from petkit.core.errors import ConfigError

OUTPUT_SHAPES = ("bnc", "bchw")


def split_chessboard(x: torch.Tensor, n: int) -> torch.Tensor:
    """B×C×H×W → (n²·B)×C×(H/n)×(W/n): tile (i, j) of every image is rows [i·B, (i+1)·B) of block i·n + j."""
    h, w = x.shape[-2:]
    if h % n or w % n:
        raise ConfigError(f"image of {h}x{w} cannot be split into {n}x{n} equal tiles")
    th, tw = h // n, w // n
    return torch.cat([x[..., i * th:(i + 1) * th, j * tw:(j + 1) * tw] for i in range(n) for j in range(n)])


def merge_chessboard(x: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of `split_chessboard`: (n²·B)×C×h×w → B×C×(n·h)×(n·w)."""
    b = x.shape[0] // (n * n)
    tile = lambda i, j: x[(i * n + j) * b:(i * n + j + 1) * b]  # noqa: E731
    return torch.cat([torch.cat([tile(i, j) for j in range(n)], dim=-1) for i in range(n)], dim=-2)


def _check_scales(scales: Sequence[int]) -> list[int]:
    if isinstance(scales, (int, float)) or not len(scales):
        raise ConfigError(f"scales must be a non-empty list of integers >= 1, got {scales!r}")
    bad = [s for s in scales if isinstance(s, bool) or not isinstance(s, int) or s < 1]
    if bad:
        raise ConfigError(f"scales must be integers >= 1, got {list(scales)!r} (bad: {bad!r})")
    return list(scales)


def s2_forward(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, scales: Sequence[int] = (1, 2),
               *, tile_size: int | None = None, num_prefix_tokens: int = 0, output_shape: str = "bnc",
               resize_output_to_idx: int = 0, split_forward: bool = False) -> torch.Tensor:
    """Multi-scale features of square images B×C×S×S. ``model`` maps tiles to B×N×C tokens
    (``output_shape="bnc"``, the first ``num_prefix_tokens`` being CLS-like) or to B×C×h×w maps
    (``"bchw"``). ``tile_size`` defaults to S. ``split_forward`` runs the tiles B at a time (less memory)."""
    scales = _check_scales(scales)
    if output_shape not in OUTPUT_SHAPES:
        raise ConfigError(f"output_shape must be one of {OUTPUT_SHAPES}, got {output_shape!r}")
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ConfigError(f"S² needs square images B×C×S×S, got shape {tuple(images.shape)}")
    if not 0 <= resize_output_to_idx < len(scales):
        raise ConfigError(f"resize_output_to_idx={resize_output_to_idx} is not an index into scales {scales}")
    if num_prefix_tokens and output_shape != "bnc":
        raise ConfigError("num_prefix_tokens only applies to token outputs (output_shape='bnc')")
    b, size = images.shape[0], images.shape[-1]
    tile = tile_size or size
    maps, prefixes = [], []
    for scale in scales:
        side = size * scale
        n = math.ceil(side / tile)
        if side % n:
            raise ConfigError(f"image side {size}·{scale} = {side} is not divisible into {n} tiles "
                              f"(tile_size {tile}); pick a size divisible by the tile count")
        x = images if side == size else F.interpolate(images.float(), size=(side, side), mode="bicubic",
                                                      align_corners=False).to(images.dtype)
        tiles = split_chessboard(x, n)
        if split_forward:
            feats = torch.cat([model(part) for part in tiles.split(b)])
        else:
            feats = model(tiles)
        if output_shape == "bnc":
            prefix, feats = feats[:, :num_prefix_tokens], feats[:, num_prefix_tokens:]
            grid = math.isqrt(feats.shape[1])
            if grid * grid != feats.shape[1]:
                raise ConfigError(f"{feats.shape[1]} tokens after {num_prefix_tokens} prefix tokens is not a square "
                                  f"grid; set num_prefix_tokens (1 for a ViT's CLS)")
            feats = feats.transpose(1, 2).reshape(feats.shape[0], feats.shape[2], grid, grid)
            prefixes.append(prefix.reshape(n * n, b, *prefix.shape[1:]).mean(0))
        maps.append(merge_chessboard(feats, n))
    target = maps[resize_output_to_idx].shape[-2:]
    out = torch.cat([m if m.shape[-2:] == target else F.interpolate(m.float(), size=target, mode="area").to(m.dtype)
                     for m in maps], dim=1)
    if output_shape == "bchw":
        return out
    tokens = out.flatten(2).transpose(1, 2)
    return torch.cat([torch.cat(prefixes, dim=-1), tokens], dim=1) if num_prefix_tokens else tokens
