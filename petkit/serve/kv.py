"""The running batch's KV cache, left-padded so sequences of different lengths share one tensor.

Row i of every layer's keys/values holds sequence i, right-aligned: its tokens occupy the last
`lengths[i]` positions, the positions before them are padding that the attention mask hides. A decode
step appends one column for every row. Sequences join (their prefill cache is padded to the common
length and concatenated along the batch) and leave (their rows are dropped) between steps; columns
that are padding in every row are cut off so the cache is never longer than the longest sequence.
"""

from __future__ import annotations

import torch

from petkit.core.errors import ConfigError


def layers_of(cache) -> list:
    """The cache's per-layer key/value holders; refuses caches the padding scheme cannot handle."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ConfigError(f"{type(cache).__name__} has no per-layer keys/values; petkit serve batches "
                          "models whose generate() uses transformers' DynamicCache")
    for layer in layers:
        if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
            raise ConfigError(f"{type(layer).__name__}: sliding-window or recurrent caches cannot be left-padded "
                              "and shared by a running batch; this model cannot be served with continuous batching")
    return layers


class RunningCache:
    """The cache, attention mask and per-row lengths of the sequences being decoded together."""

    def __init__(self, cache, mask: torch.Tensor):
        self.cache = cache
        self.mask = mask  # (rows, columns): 1 where a row has a real token
        layers_of(cache)

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def columns(self) -> int:
        return self.mask.shape[1]

    def positions(self) -> torch.Tensor:
        """Each row's position id for the next token: the number of real tokens it holds."""
        return self.mask.sum(1, keepdim=True)

    def append_column(self) -> None:
        """Extend the mask by one real token per row (the cache itself grows inside the forward)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], 1)

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order), then drop leading columns no kept row uses."""
        index = torch.tensor(rows, dtype=torch.long)
        self.mask = self.mask.index_select(0, index)
        for layer in layers_of(self.cache):
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        self._trim()

    def join(self, other: "RunningCache") -> None:
        """Append other's rows after these, padding the shorter of the two on the left."""
        width = max(self.columns, other.columns)
        mine, theirs = layers_of(self.cache), layers_of(other.cache)
        if len(mine) != len(theirs):
            raise ValueError(f"caches of {len(mine)} and {len(theirs)} layers cannot be joined")
        for a, b in zip(mine, theirs):
            a.keys = torch.cat([_pad_left(a.keys, width), _pad_left(b.keys, width)], 0)
            a.values = torch.cat([_pad_left(a.values, width), _pad_left(b.values, width)], 0)
        self.mask = torch.cat([_pad_left(self.mask, width, dim=1), _pad_left(other.mask, width, dim=1)], 0)

    def _trim(self) -> None:
        if self.rows == 0:
            return
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(used) else self.columns
        if start == 0:
            return
        self.mask = self.mask[:, start:]
        for layer in layers_of(self.cache):
            layer.keys = layer.keys[:, :, start:]
            layer.values = layer.values[:, :, start:]


def _pad_left(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim)
