"""SHERL (Diao et al., ECCV 2024, arXiv 2407.07523): aggregate the frozen layers' features with an
anti-redundancy weighting, then let the last pre-trained layer(s) read the result.

With L layers and the last K kept as the late route, the early route reads the tiers f_0 (the
embeddings), f_1 … f_J (outputs of layers 0 … J−1, J = L − K) without gradients, and computes per
token

    f̃_j = LN(W_j f_j)                  W_j: d → h = d / downsample                  (j = 0 … J)
    g    = f̃_J                          the deepest tier guides
    R_j  = Σ_k ReLU(cos(f̃_j, f̃_k))      redundancy among the shallow tiers (j, k < J)
    a_j  = ReLU(w·(f̃_j ⊙ g) + b) / R_j,  a ← a / Σ_j |a_j|
    z    = Σ_j a_j f̃_j + g
    out  = Dropout(LN(W_up ReLU(z))) + tanh(β / T) · f_J      β = 0 at init, T = 0.1

and `out` replaces the input of layer J: the last K layers stay pre-trained and frozen, gradients
pass through them to the early route (the released code's choice; the paper does not train them
either), so only those K layers keep activations for backward. As the official code: LayerNorm
eps 1e-12 and dropout 0.1 after W_up, w with a bias, every Linear with PyTorch's default init.

Trainable: (J+1)·(d·h + 3h) + (h + 1) + (h·d + d) + 2d + 1 (+ the task head). Not identity at init;
not mergeable. Any model with one stack of layers (BERT, GPT-2, Llama, ViT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.config import AdapterConfig, check, is_number, is_pos_int
from petkit.core.errors import ConfigError, TargetError
from petkit.core.model_delta import ModelDelta
from petkit.core.registry import Method, MethodDefaults, register
from petkit.models.structure import hf_model, hidden_size, layer_stacks, own_layers
from petkit.models.taps import LayerTaps, hidden_of, with_hidden


@dataclass(frozen=True)
class SherlConfig(AdapterConfig):
    """late_layers: K, the pre-trained layers that read the aggregate. downsample: d / h of the tiers.
    gate_temperature: T in tanh(β / T). dropout: after W_up."""

    late_layers: int = 1
    downsample: int = 2
    gate_temperature: float = 0.1
    dropout: float = 0.1

    def validate(self):
        check(is_pos_int(self.late_layers), f"late_layers must be a positive integer, got {self.late_layers!r}")
        check(is_pos_int(self.downsample), f"downsample must be a positive integer, got {self.downsample!r}")
        check(is_number(self.gate_temperature) and self.gate_temperature > 0,
              f"gate_temperature must be > 0, got {self.gate_temperature!r}")
        check(is_number(self.dropout) and 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")
        check(not self.targets, "SHERL has no targets: it reads every early layer")


class SherlDelta(ModelDelta):
    def __init__(self, model: nn.Module, config: SherlConfig, init: bool = True):
        super().__init__()
        hf = hf_model(model, "SHERL")
        stacks = layer_stacks(hf)
        if len(stacks) != 1:
            raise TargetError(f"SHERL needs one stack of transformer layers to read; {type(hf).__name__} has "
                              f"{len(stacks)} ({', '.join(n for n, _ in stacks)})")
        stack = own_layers(hf, stacks[0][1], "SHERL")
        object.__setattr__(self, "stack", stack)  # looked at, not owned
        object.__setattr__(self, "hf", hf)
        self.late = config.late_layers
        if self.late >= len(stack):
            raise ConfigError(f"late_layers={self.late} leaves no early layer to read: the model has {len(stack)} "
                              f"layers; use late_layers <= {len(stack) - 1}")
        d = hidden_size(hf.config)
        if d % config.downsample:
            raise ConfigError(f"downsample={config.downsample} does not divide the hidden size {d}")
        h = d // config.downsample
        self.split = len(stack) - self.late  # J: the first late layer, and the number of early outputs
        self.tiers = nn.ModuleList(nn.Sequential(nn.Linear(d, h), nn.LayerNorm(h)) for _ in range(self.split + 1))
        self.attend = nn.Linear(h, 1)
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(h, d), nn.LayerNorm(d, eps=1e-12), nn.Dropout(config.dropout))
        self.beta = nn.Parameter(torch.zeros(1))
        self.temperature = config.gate_temperature

    def describe(self) -> str:
        return f"aggregate of {self.split + 1} frozen tiers feeds the last {self.late} layer(s)"

    def attach(self, model: nn.Module) -> None:
        calls = self.hook_call(self.hf, None, None)  # the frame each forward's taps are kept in
        self.taps = LayerTaps(self.hook, self.stack, calls, range(self.split - 1))  # layer J−1's output is layer J's input
        self.hook(self.stack[self.split], pre=True, fn=self._replace_input)

    def aggregate(self, features: list[torch.Tensor]) -> torch.Tensor:
        """out from the tiers f_0 … f_J (each batch × tokens × d)."""
        reduced = torch.stack([tier(f) for tier, f in zip(self.tiers, features)], dim=2)  # b × n × tiers × h
        shallow, guide = reduced[:, :, :-1], reduced[:, :, -1:]
        unit = nn.functional.normalize(shallow, dim=-1)
        redundancy = torch.relu(unit @ unit.transpose(-1, -2)).sum(-1, keepdim=True)
        weights = torch.relu(self.attend(shallow * guide)) / redundancy
        weights = weights / (weights.abs().sum(dim=2, keepdim=True) + 1e-8)
        z = (weights * shallow).sum(dim=2) + guide[:, :, 0]
        return self.out(z) + torch.tanh(self.beta / self.temperature) * features[-1]

    def _replace_input(self, module, args, kwargs):
        deepest = hidden_of(args, kwargs)
        features = [self.taps.embedding] + [self.taps.outputs[i] for i in range(self.split - 1)] + [deepest.detach()]
        out = self.aggregate(features).to(deepest.dtype)
        return with_hidden(args, kwargs, out)


register(Method(
    name="sherl", config=SherlConfig, kind="model", build=SherlDelta, layer_types=(), mergeable=False,
    spec="Diao et al., ECCV 2024 (arXiv 2407.07523); official code Paranioar/SHERL",
    summary="anti-redundancy aggregation of frozen layer features, read by the last pre-trained layer(s)",
    bench=MethodDefaults({"late_layers": 1}, (1e-3, 3e-3), "side network"),
))
