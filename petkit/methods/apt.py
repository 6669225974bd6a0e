"""APT: approximated prompt tuning (Wu et al., arXiv 2306.15706; official code DoubtedSteam/APT).

Deep prompts cost every layer a global attention over N + m tokens. APT keeps the m prompts out of
the sequence and adds their effect to the frozen attention output as an independent step, per
token (so it is causal-safe and works in decoders too):

    x   = the attention's input (after the layer's norm),  h = its output after the projection
    K_P = P + (P U) V                 P ∈ R^{m×d} ~ N(0, 0.02²), U ∈ R^{d×k} ~ N(0, 1), V ∈ R^{k×d} = 0
    A   = ReLU(x K_Pᵀ)                N × m, a ReLU kernel instead of the softmax
    E   = A P                         the prompts as values
    w   = stopgrad(max_j A_{·j})      per-token weight, standing in for the attention mass on prompts
    out = exp(s) · (h + w ⊙ E)        s = 0 at init

Extra cost per layer O(N·m·d) instead of deep prompts' O((N+m)²·d) (and their FFN over the m
prompts). Trainable per layer m·d + 2·d·k + 1 (+ the task head). Not identity at init (E ≠ 0, as
in the paper); not mergeable (input-dependent). Self-attention only (cross-attention untouched).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.config import AdapterConfig, check, is_pos_int
from petkit.core.errors import StateError, TargetError
from petkit.core.model_delta import ModelDelta
from petkit.core.registry import Method, MethodDefaults, register
from petkit.core.targeting import resolve_targets
from petkit.core.unwrapped import named_base_modules
from petkit.models.attention import is_cross_attention_path
from petkit.models.structure import hf_model, hidden_size
from petkit.models.taps import Captures


@dataclass(frozen=True)
class AptConfig(AdapterConfig):
    """num_virtual_tokens: m prompts per layer. key_rank: k, the rank of the key transform U V."""

    num_virtual_tokens: int = 50
    key_rank: int = 4

    def validate(self):
        check(is_pos_int(self.num_virtual_tokens),
              f"num_virtual_tokens must be a positive integer, got {self.num_virtual_tokens!r}")
        check(is_pos_int(self.key_rank), f"key_rank must be a positive integer, got {self.key_rank!r}")
        check(not self.targets, "APT has no targets: every self-attention layer gets its prompts")


class AptDelta(ModelDelta):
    def __init__(self, model: nn.Module, config: AptConfig, init: bool = True):
        super().__init__()
        hf = hf_model(model, "APT")
        inputs, outputs = _attention_ends(hf)
        object.__setattr__(self, "ends", list(zip(inputs, outputs)))  # looked at, not owned
        layers, m, d, k = len(self.ends), config.num_virtual_tokens, hidden_size(hf.config), config.key_rank
        self.m = m
        self.prompts = nn.Parameter(torch.zeros(layers, m, d))
        self.u = nn.Parameter(torch.zeros(layers, d, k))
        self.v = nn.Parameter(torch.zeros(layers, k, d))
        self.scale = nn.Parameter(torch.zeros(layers))
        if init:
            with torch.no_grad():
                self.prompts.normal_(0.0, 0.02)
                self.u.normal_()
        self._inputs = [Captures() for _ in self.ends]  # what each layer's query projection read

    def describe(self) -> str:
        return f"{self.m} approximated prompts in each of {len(self.ends)} attention layers"

    def attach(self, model: nn.Module) -> None:
        for layer, (first, last) in enumerate(self.ends):
            self.hook(first, pre=True, fn=self._reader(layer))
            self.hook(last, pre=False, fn=self._adder(layer))

    def _reader(self, layer: int):
        def read(module, args, kwargs):
            self._inputs[layer].add(args[0] if args else kwargs["input"])
        return read

    def _adder(self, layer: int):
        def add(module, args, kwargs, h):
            x = self._inputs[layer].take(h)  # the tokens (DeBERTa also runs q on its position embeddings)
            if x is None:
                raise StateError(f"APT adapter {self._name!r} saw no input of the attention layer {layer} in this "
                                 "forward; call the whole model, not a module of it")
            prompts = self.prompts[layer].to(x.dtype)
            keys = prompts + (prompts @ self.u[layer]) @ self.v[layer]
            affinity = torch.relu(x @ keys.T)                       # N × m
            weight = affinity.amax(dim=-1, keepdim=True).detach()
            return torch.exp(self.scale[layer]) * (h + weight * (affinity @ prompts))
        return add


def _attention_ends(hf: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """Per self-attention layer: the module that reads its input (q, or GPT-2's fused c_attn) and the
    output projection."""
    modules = dict(named_base_modules(hf))
    try:
        firsts = resolve_targets(hf, ["attn.q"])
    except TargetError:
        firsts = resolve_targets(hf, ["attn.qkv"])  # q fused with k and v (GPT-2)
    lasts = resolve_targets(hf, ["attn.out"])
    firsts = [p for p in firsts if not is_cross_attention_path(p)]
    lasts = [p for p in lasts if not is_cross_attention_path(p)]
    if len(firsts) != len(lasts) or not firsts:
        raise TargetError(f"APT could not pair the attention inputs and outputs of {type(hf).__name__} "
                          f"({len(firsts)} query projections, {len(lasts)} output projections)")
    return [modules[p] for p in firsts], [modules[p] for p in lasts]


register(Method(
    name="apt", config=AptConfig, kind="model", build=AptDelta, layer_types=(), mergeable=False,
    spec="Wu et al. 2023 (arXiv 2306.15706); official code DoubtedSteam/APT",
    summary="approximated prompts: a per-token ReLU-kernel prompt step added to each attention output",
    bench=MethodDefaults({"num_virtual_tokens": 50}, (1e-3, 5e-3), "prompt"),
))
