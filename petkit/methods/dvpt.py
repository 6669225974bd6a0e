"""DVPT: dynamic visual prompt tuning (He et al., arXiv 2307.09787), the paper's formulation.

After each transformer layer, a module (shared by all layers by default) reads the layer's frozen
output X (N × d):

    X̃ = GELU(X W_d + b_d)                   bottleneck d → r
    P̂ = MHA(Q = P, K = X̃, V = X̃)            m learnable queries P ∈ R^{m×r} (N(0, 0.02²)): sample-specific prompts
    X ← X + mean_m(P̂) W_u + b_u             projected back to d, added to every token; W_u, b_u = 0

so the model starts exactly at the base model. The paper does not pin the aggregation down; this
additive form is the specification's choice (b), marked unverified there. The official ViT code
differs (a parallel shared MLP with a zero-init gate, VPT-shallow prompts): not reproduced here.
Padding tokens are masked out of the cross-attention.

Encoders only (BERT-style, ViT): the queries read the whole sequence, which in a causal model would
let a position see later tokens. Trainable (shared): d·r + r + m·r + 4r² + 4r + r·d + d; per layer
(shared=false) L times that (+ the task head). Not mergeable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.config import AdapterConfig, check, is_pos_int
from petkit.core.model_delta import ModelDelta
from petkit.core.registry import Method, MethodDefaults, register
from petkit.models.calls import PaddingReader
from petkit.models.structure import encoder_stack, hf_model, hidden_size
from petkit.models.taps import output_hidden, with_output_hidden


@dataclass(frozen=True)
class DvptConfig(AdapterConfig):
    """bottleneck: r. num_queries: m. heads: of the cross-attention (must divide r). shared: one module
    for every layer (the paper's) or one per layer."""

    bottleneck: int = 32
    num_queries: int = 10
    heads: int = 4
    shared: bool = True

    def validate(self):
        for name in ("bottleneck", "num_queries", "heads"):
            check(is_pos_int(getattr(self, name)), f"{name} must be a positive integer, got {getattr(self, name)!r}")
        check(self.bottleneck % self.heads == 0,
              f"heads={self.heads} must divide bottleneck={self.bottleneck} (each head reads bottleneck/heads dims)")
        check(isinstance(self.shared, bool), f"shared must be true or false, got {self.shared!r}")
        check(not self.targets, "DVPT has no targets: it follows every layer")


class DvptModule(nn.Module):
    def __init__(self, d: int, r: int, m: int, heads: int):
        super().__init__()
        self.down = nn.Linear(d, r)
        self.queries = nn.Parameter(torch.randn(m, r) * 0.02)
        self.attend = nn.MultiheadAttention(r, heads, batch_first=True)
        self.up = nn.Linear(r, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        features = nn.functional.gelu(self.down(x))
        queries = self.queries.expand(x.shape[0], -1, -1)
        prompts, _ = self.attend(queries, features, features, key_padding_mask=padding, need_weights=False)
        return x + self.up(prompts.mean(dim=1, keepdim=True))


class DvptDelta(ModelDelta):
    def __init__(self, model: nn.Module, config: DvptConfig, init: bool = True):
        super().__init__()
        object.__setattr__(self, "hf", hf_model(model, "DVPT"))
        object.__setattr__(self, "layers", list(encoder_stack(self.hf, "DVPT")))
        d = hidden_size(self.hf.config)
        count = 1 if config.shared else len(self.layers)
        self.blocks = nn.ModuleList(DvptModule(d, config.bottleneck, config.num_queries, config.heads)
                                      for _ in range(count))
        self.shared = config.shared

    def describe(self) -> str:
        how = "one module shared by" if self.shared else "one module for each of"
        return f"dynamic prompts after every layer ({how} {len(self.layers)} layers)"

    def attach(self, model: nn.Module) -> None:
        # the base model (BertModel, ViTModel), which every path to the layers goes through
        self.inputs = PaddingReader(self.hook, self.hf.base_model, f"DVPT adapter {self._name!r}")
        for index, layer in enumerate(self.layers):
            self.hook(layer, pre=False, fn=self._after(index))

    def _after(self, index: int):
        def add(module, args, kwargs, out):
            block = self.blocks[0 if self.shared else index]
            hidden = block(output_hidden(out), self.inputs.padding)
            return with_output_hidden(out, hidden)
        return add


register(Method(
    name="dvpt", config=DvptConfig, kind="model", build=DvptDelta, layer_types=(), mergeable=False,
    spec="He et al. 2023 (arXiv 2307.09787), paper formulation; aggregation as the spec's option (b)",
    summary="dynamic prompts: learnable queries cross-attend to a bottleneck of each layer's output",
    bench=MethodDefaults({"bottleneck": 32, "num_queries": 10, "heads": 4}, (1e-3, 5e-3), "prompt"),
))
