"""DGCNN's prompt generator (Wang et al., ACM TOG 2019; as IDPT uses it): EdgeConv layers on a
k-nearest-neighbour graph of tokens in feature space, then a global max-pool.

For tokens x_1 … x_n (padding left out of everything: it is no node, no neighbour, in no
statistic and in no pool), one EdgeConv layer is

    N(i)  = the k tokens nearest to x_i (Euclidean; x_i itself included, at distance 0), found
            again on each layer's input (DGCNN's dynamic graph)
    x_i'  = max_{j ∈ N(i)} LeakyReLU_0.2( BN( W [x_i ; x_j − x_i] ) )          W: 2c → c', no bias

and the generator, with three such layers (d → h → h → h, h = d in the paper),

    p = maxpool_i LeakyReLU_0.2( BN( F [x_i¹ ; x_i² ; x_i³] ) )                 F: 3h → m·d, no bias

giving m prompts of width d per sample (m = 1, h = d: the official DGCNNView, k = 20). The linear
map is applied per token, not per edge: W [x_i ; x_j − x_i] = (W_c − W_o) x_i + W_o x_j, with
W = [W_c | W_o], so its cost does not grow with k. A sequence with fewer than k tokens gets all of
them as neighbours. Batch norms see only real edges and tokens (so padding changes no statistic).
"""

from __future__ import annotations

import torch
from torch import nn

SLOPE = 0.2  # DGCNN's LeakyReLU


def knn_graph(x: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The neighbours of every token: indices (b × n × k') and which of those edges are real (both
    ends real tokens), k' = min(k, n). x: b × n × c; valid: b × n bool."""
    points = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # cdist has no half-precision kernel
    distance = torch.cdist(points, points).masked_fill(~valid[:, None, :], float("inf"))
    index = distance.topk(min(k, x.shape[1]), dim=-1, largest=False).indices
    real = valid[:, :, None] & torch.gather(valid[:, None, :].expand(-1, x.shape[1], -1), 2, index)
    return index, real


def masked_norm(norm: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the entries keep marks (x: … × c; keep: x's shape without c); the rest -inf,
    which every later max skips."""
    out = torch.full_like(x, float("-inf"))
    out[keep] = norm(x[keep])
    return out


class EdgeConv(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.edge = nn.Linear(2 * n_in, n_out, bias=False)  # reads [x_i ; x_j − x_i]
        self.norm = nn.BatchNorm1d(n_out)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
        index, real = knn_graph(x.detach(), valid, k)
        centre, offset = self.edge.weight.split(x.shape[-1], dim=1)
        own = x @ (centre - offset).T                                           # b × n × c'
        theirs = x @ offset.T
        gathered = torch.gather(theirs[:, None].expand(-1, x.shape[1], -1, -1), 2,
                                index[..., None].expand(-1, -1, -1, theirs.shape[-1]))  # b × n × k' × c'
        edges = masked_norm(self.norm, own[:, :, None] + gathered, real)
        out = nn.functional.leaky_relu(edges, SLOPE).amax(dim=2)
        return out.masked_fill(~valid[..., None], 0.0)  # padding: no node (and no inf for the next distances)


class DgcnnGenerator(nn.Module):
    """m prompts (b × m × d) from the tokens (b × n × d) and their validity (b × n bool)."""

    def __init__(self, d: int, hidden: int, prompts: int, neighbors: int, layers: int = 3):
        super().__init__()
        self.k, self.m = neighbors, prompts
        self.edges = nn.ModuleList(EdgeConv(d if i == 0 else hidden, hidden) for i in range(layers))
        self.fuse = nn.Linear(layers * hidden, prompts * d, bias=False)
        self.norm = nn.BatchNorm1d(prompts * d)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x, levels = tokens, []
        for layer in self.edges:
            x = layer(x, valid, self.k)
            levels.append(x)
        fused = masked_norm(self.norm, self.fuse(torch.cat(levels, dim=-1)), valid)
        pooled = nn.functional.leaky_relu(fused, SLOPE).amax(dim=1)
        pooled = pooled.masked_fill(~valid.any(dim=1)[:, None], 0.0)  # a sample with no token: a zero prompt
        return pooled.view(len(tokens), self.m, -1)
