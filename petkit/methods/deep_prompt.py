"""Deep prompts: trainable prompts at every layer, not only at the input — each family in the form
of the paper that introduced it there.

- Vision transformers: VPT-deep (Jia et al. 2022, arXiv 2203.12119). Layer l reads
  [x_cls, P_l, x_patches] with its own m prompt tokens P_l ∈ R^{m×d}; what the layer outputs at the
  prompt positions is dropped and layer l+1 reads P_{l+1} there instead. Trainable L·m·d; init
  uniform ±√(6 / (3·patch² + d)) as VPT.
- Text models (encoders, decoders, T5): P-tuning v2 (Liu et al. 2022, arXiv 2110.07602), whose deep
  prompts are per-layer keys and values with no reparametrisation — prefix tuning without the MLP
  (`petkit.methods.prefix`, all of its behaviour: positions, generation, the causal mask).
  Trainable L·m·2·h_kv·d_h, init N(0, 1) as the P-tuning v2 code.

Not identity at init; not mergeable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.config import AdapterConfig, check, is_pos_int
from petkit.core.errors import ConfigError, TargetError
from petkit.core.model_delta import ModelDelta
from petkit.core.registry import Method, MethodDefaults, register
from petkit.interop.peft_prompt import PromptFormat
from petkit.methods.prefix import PEFT as PREFIX_PEFT, PrefixDelta, PrefixTuningConfig
from petkit.models.structure import hf_model, is_vision, layer_stacks, vpt_bound
from petkit.models.taps import hidden_of, output_hidden, with_hidden, with_output_hidden


@dataclass(frozen=True)
class DeepPromptConfig(AdapterConfig):
    """num_virtual_tokens: prompt tokens per layer (m)."""

    num_virtual_tokens: int = 10

    def validate(self):
        check(is_pos_int(self.num_virtual_tokens),
              f"num_virtual_tokens must be a positive integer, got {self.num_virtual_tokens!r}")
        check(not self.targets, "deep prompts have no targets: every layer gets prompts")


def build(model: nn.Module, config: DeepPromptConfig, init: bool = True) -> ModelDelta:
    if is_vision(hf_model(model, "deep prompts").config):
        return VptDeepDelta(model, config, init)
    return PrefixDelta(model, PrefixTuningConfig(num_virtual_tokens=config.num_virtual_tokens, projection=False), init)


class VptDeepDelta(ModelDelta):
    def __init__(self, model: nn.Module, config: DeepPromptConfig, init: bool = True):
        super().__init__()
        hf = hf_model(model, "deep prompts")
        stacks = layer_stacks(hf)
        if len(stacks) != 1:
            raise TargetError(f"VPT-deep needs one stack of transformer layers; {type(hf).__name__} has {len(stacks)}")
        object.__setattr__(self, "layers", list(stacks[0][1]))  # looked at, not owned
        self.m = config.num_virtual_tokens
        width = hf.config.hidden_size
        self.prompts = nn.Parameter(torch.zeros(len(self.layers), self.m, width))
        if init:
            bound = vpt_bound(hf.config, width)
            with torch.no_grad():
                self.prompts.uniform_(-bound, bound)

    def describe(self) -> str:
        return f"{self.m} prompt tokens after [CLS] in each of {len(self.layers)} layers (VPT-deep)"

    def attach(self, model: nn.Module) -> None:
        for index, layer in enumerate(self.layers):
            self.hook(layer, pre=True, fn=self._inserter(index))
            self.hook(layer, pre=False, fn=self._drop_prompt_positions)

    def _inserter(self, index: int):
        def insert(module, args, kwargs):
            hidden = hidden_of(args, kwargs)
            prompt = self.prompts[index].to(hidden.dtype).expand(hidden.shape[0], -1, -1)
            return with_hidden(args, kwargs, torch.cat([hidden[:, :1], prompt, hidden[:, 1:]], dim=1))
        return insert

    def _drop_prompt_positions(self, module, args, kwargs, out):
        def drop(hidden):
            return torch.cat([hidden[:, :1], hidden[:, 1 + self.m:]], dim=1)
        return with_output_hidden(out, drop(output_hidden(out)))


# -- Hugging Face PEFT's format: P-tuning v2's deep prompts are prefixes, written as PREFIX_TUNING and
# read back as `prefix`; VPT-deep's per-layer tokens have no PEFT type --------------------------------

def _peft_table(am, name: str):
    if not isinstance(am.model_deltas[name], PrefixDelta):
        raise ConfigError("PEFT has no per-layer prompt tokens (VPT-deep); save this adapter with format='petkit'")
    return PREFIX_PEFT.table(am, name)


PEFT = PromptFormat("PREFIX_TUNING", table=_peft_table, reads=False)


register(Method(
    name="deep_prompt", config=DeepPromptConfig, kind="model", build=build, layer_types=(), mergeable=False,
    spec="VPT-deep (Jia et al. 2022, arXiv 2203.12119) for ViT; P-tuning v2 (Liu et al. 2022, arXiv 2110.07602) for text",
    summary="prompts at every layer: per-layer tokens (ViT, VPT-deep) or per-layer keys/values (text, P-tuning v2)",
    peft=PEFT,
    # bench: P-tuning v2's rates
    bench=MethodDefaults({"num_virtual_tokens": 10}, (3e-3, 1e-2), "prompt"),
))
