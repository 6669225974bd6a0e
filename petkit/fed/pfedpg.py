"""pFedPG's server side (Yang, Wang & Wang, ICCV 2023): a prompt generator that gives every client its
own prompt and learns from the directions the clients moved them.

    P_n = Attn(Q = W_q d_n, K = W_k P_base, V = W_v P_base) → W_o        (L prompt tokens for client n)

with a shared prompt basis P_base (L × d), one learnable descriptor d_n (L × d) per client, and
multi-head cross-attention. After a round, client n reports ΔP_n = P̃_n − P_n (its locally tuned prompt
minus the one it was sent); the server takes one optimizer step on

    Σ_n ½ ‖P_n(φ) − stopgrad(P_n + ΔP_n)‖²,   i.e.  ∇_φ = −Σ_n (∂P_n/∂φ)ᵀ ΔP_n,

which moves the generator *along* the clients' updates (the unofficial code steps against them).
``FreePrompts`` (one free prompt per client) is the degenerate generator: with SGD at lr 1 one step
sets every P_n to P̃_n exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from petkit.core.errors import ConfigError


class PromptGenerator(nn.Module):
    def __init__(self, clients: int, length: int, width: int, heads: int = 4, seed: int = 0):
        super().__init__()
        if width % heads:
            raise ConfigError(f"the prompt width {width} must be divisible by the generator's heads ({heads})")
        g = torch.Generator().manual_seed(seed)
        self.base = nn.Parameter(torch.randn(length, width, generator=g) * 0.02)
        self.descriptors = nn.Parameter(torch.randn(clients, length, width, generator=g) * 0.02)
        with torch.random.fork_rng():  # the attention's own init from the same seed, not the global stream
            torch.manual_seed(seed)
            self.attention = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, clients: list[int]) -> torch.Tensor:
        """Prompts for the given clients: (len(clients), length, width)."""
        queries = self.descriptors[clients]
        basis = self.base.expand(len(clients), -1, -1)
        return self.attention(queries, basis, basis, need_weights=False)[0]


class FreePrompts(nn.Module):
    """One independent prompt per client (no sharing): the generator pFedPG degenerates to."""

    def __init__(self, clients: int, length: int, width: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.prompts = nn.Parameter(torch.randn(clients, length, width, generator=g) * 0.02)

    def forward(self, clients: list[int]) -> torch.Tensor:
        return self.prompts[clients]


class PromptServer:
    """The generator with its optimizer: ``prompts(clients)`` to send, ``step(clients, deltas)`` after a round."""

    def __init__(self, generator: nn.Module, lr: float = 1e-3, optimizer: str = "adam"):
        if optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.generator = generator
        make = torch.optim.AdamW if optimizer == "adam" else torch.optim.SGD
        self.optimizer = make(generator.parameters(), lr=lr, **({"weight_decay": 0.0} if optimizer == "adam" else {}))

    @torch.no_grad()
    def prompts(self, clients: list[int]) -> torch.Tensor:
        return self.generator(clients).detach().clone()

    def step(self, clients: list[int], deltas: list[torch.Tensor]) -> float:
        """One update from the clients' prompt changes ΔP_n; returns the loss before the step."""
        if len(clients) != len(deltas) or not clients:
            raise ConfigError(f"one prompt change per client is needed: {len(clients)} clients, {len(deltas)} changes")
        current = self.generator(clients)
        target = current.detach() + torch.stack([d.to(current.dtype) for d in deltas])
        loss = 0.5 * ((current - target) ** 2).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
