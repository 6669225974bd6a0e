"""CoOp (Zhou et al., IJCV 2022) and CoCoOp (CVPR 2022) for a text-text dual encoder.

    g_c = normalize(mean-pool(E([CLS] v_1 … v_M w(c) "." [SEP])))     the frozen encoder runs on soft tokens
    logits_c(x) = s · cos(f(x), g_c),   loss = CE                      f(x): the frozen input embedding

Only the context v is trained (one M×d block shared by all classes, or K×M×d with ``csc``); with
``cocoop`` a meta-net π adds the same π(f(x)) to every context vector, so each input gets its own
class embeddings. The encoder is frozen and kept in eval mode (no dropout), as CLIP's is in CoOp.

Where this differs from the released code (KaiyangZhou/CoOp, ``trainers/coop.py``):
- CLIP reads the class feature at the end-of-text token; MiniLM mean-pools every real token, so the
  context positions enter the pooled vector directly (``pool_exclude_ctx`` pools without them).
- s = 20 (sentence-transformers' scale) instead of CLIP's 100, fixed as in CoOp.
- ``ctx_init`` with ``csc`` copies the init words into every class's context; the released code
  ignores ``csc`` when init words are given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.errors import ConfigError
from petkit.models.pooling import encode

from .config import DEFAULT_N_CTX, CoOpConfig
from .prompts import build_slots, context_token_ids


class CoOpClassifier(nn.Module):
    """Classifies frozen input embeddings (B, d_in) against learnable class prompts. ``encoder`` is a
    Hugging Face BERT-style encoder (``AutoModel``), frozen here in place (requires_grad off)."""

    def __init__(self, encoder: nn.Module, tokenizer, class_names: list[str], config: CoOpConfig | None = None,
                 input_dim: int | None = None):
        super().__init__()
        self.config = config = config or CoOpConfig()
        self.encoder = encoder.eval().requires_grad_(False)
        self.class_names = list(class_names)
        word_embeddings = encoder.get_input_embeddings().weight
        d = word_embeddings.shape[1]
        init_ids = context_token_ids(tokenizer, config.ctx_init) if config.ctx_init is not None else None
        n_ctx = config.n_ctx or (len(init_ids) if init_ids else DEFAULT_N_CTX)
        if init_ids is not None and n_ctx != len(init_ids):
            raise ConfigError(f"n_ctx={n_ctx} but ctx_init {config.ctx_init!r} has {len(init_ids)} tokens; "
                              f"leave n_ctx unset to take it from the init words")
        slots = build_slots(tokenizer, self.class_names, n_ctx, config.class_position, config.suffix)
        self.register_buffer("token_embeds", word_embeddings[slots.input_ids].detach().clone(), persistent=False)
        self.register_buffer("attention_mask", slots.attention_mask, persistent=False)
        self.register_buffer("ctx_positions", slots.ctx_positions, persistent=False)
        pool_mask = slots.attention_mask.clone()
        if config.pool_exclude_ctx:
            pool_mask.scatter_(1, slots.ctx_positions, 0)
        self.register_buffer("pool_mask", pool_mask, persistent=False)

        shape = (len(self.class_names), n_ctx, d) if config.csc else (n_ctx, d)
        if init_ids is not None:
            ctx = word_embeddings[torch.tensor(init_ids)].detach().clone().expand(shape).clone()
        else:
            ctx = torch.randn(shape) * config.init_std
        self.ctx = nn.Parameter(ctx.to(word_embeddings.dtype))
        self.meta_net = None
        if config.cocoop:
            d_in = input_dim or d
            hidden = max(1, d_in // config.meta_reduction)
            self.meta_net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d))

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[-2]

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: dropout stays off while the context trains
        return self

    def prompt_embeds(self, shift: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings of the class prompts with the context written in: (K, L, d), or
        (B, K, L, d) when a per-input ``shift`` (B, d) is added to every context vector (CoCoOp)."""
        k = len(self.class_names)
        ctx = self.ctx if self.config.csc else self.ctx.expand(k, *self.ctx.shape)
        rows = torch.arange(k, device=ctx.device).unsqueeze(1)
        if shift is None:
            embeds = self.token_embeds.clone()
            embeds[rows, self.ctx_positions] = ctx
            return embeds
        b = shift.shape[0]
        ctx = ctx.unsqueeze(0) + shift[:, None, None, :]
        embeds = self.token_embeds.expand(b, *self.token_embeds.shape).clone()
        embeds[:, rows, self.ctx_positions] = ctx
        return embeds

    def class_embeddings(self, features: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-norm class embeddings g: (K, d), or (B, K, d) for CoCoOp given input features."""
        if self.meta_net is None:
            return encode(self.encoder, self.attention_mask, inputs_embeds=self.prompt_embeds(),
                          pool_mask=self.pool_mask)
        if features is None:
            raise ConfigError("CoCoOp class embeddings depend on the input: pass its features")
        embeds = self.prompt_embeds(self.meta_net(F.normalize(features, dim=-1)))
        b, k, length, d = embeds.shape
        flat = encode(self.encoder, self.attention_mask.repeat(b, 1), inputs_embeds=embeds.reshape(b * k, length, d),
                      pool_mask=self.pool_mask.repeat(b, 1))
        return flat.reshape(b, k, -1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) = s · cos(features, class embeddings)."""
        x = F.normalize(features, dim=-1)
        g = self.class_embeddings(features)
        sims = x @ g.T if g.dim() == 2 else torch.einsum("bd,bkd->bk", x, g)
        return self.config.logit_scale * sims

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The learned tensors only (context, meta-net): what a CoOp checkpoint holds."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}
