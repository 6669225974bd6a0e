"""Prompt tuning (Lester et al. 2021, arXiv 2104.08691): m trainable soft tokens read before the input.

Text models: the input ids are embedded by the model's own (frozen) input embedding and the prompt
P ∈ R^{m×d} is put in front, P ⊕ E(x); the attention mask gets m ones in front, token type ids m
zeros, position ids (when given) count the prompt first, and token-level labels (causal LM) m
ignored positions (-100). Token-level logits come back with the prompt positions cut off, so they
line up with the caller's input (PEFT returns them with the prompt positions; its loss is the same).
Encoder-decoder models get the prompt on the encoder input (not their sequence classifiers, which
find the EOS token in input_ids and take no inputs_embeds: refused). Vision transformers
(VPT-shallow, Jia et al. 2022): the prompt goes between the [CLS] token and the patch tokens after
the embeddings (no position embedding), so the [CLS] read-out is unchanged in kind.

Trainable: m·d (+ the task head). Init: `vocab` (default; the paper's better choice) copies the
input embeddings of m distinct token ids drawn at random; `text` the embeddings of a text's tokens
(repeated or cut to m; needs `tokenizer`); `random` N(0, σ²) with σ the std of the input embedding
matrix (PEFT's RANDOM draws N(0, 1), far off the scale of most embeddings); ViT: VPT's uniform
±√(6 / (3·patch² + d)), whatever `init` says. Not identity at init:
the model reads m more tokens. Not mergeable.

generate() works: the first step reads the prompt into the KV cache, later steps shift the new
tokens' positions and mask by m. Not supported: mixed-adapter batches (a clear error).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.config import AdapterConfig, check, is_pos_int
from petkit.core.errors import ConfigError, StateError, TargetError
from petkit.core.model_delta import MODEL_KEY, ModelDelta
from petkit.core.registry import Method, MethodDefaults, register
from petkit.interop.peft_prompt import PromptFormat, hf_int
from petkit.models.calls import cached_length, call_inputs
from petkit.models.heads import is_classifier
from petkit.models.structure import hf_model, is_vision, max_positions, vpt_bound

INITS = ("vocab", "text", "random")


@dataclass(frozen=True)
class PromptTuningConfig(AdapterConfig):
    """num_virtual_tokens: prompt length m. init: vocab, text or random (see the module docstring);
    init_text and tokenizer (a local path for AutoTokenizer) with init="text"."""

    num_virtual_tokens: int = 20
    init: str = "vocab"
    init_text: str | None = None
    tokenizer: str | None = None

    def validate(self):
        check(is_pos_int(self.num_virtual_tokens),
              f"num_virtual_tokens must be a positive integer, got {self.num_virtual_tokens!r}")
        check(self.init in INITS, f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.init == "text":
            check(isinstance(self.init_text, str) and self.init_text.strip() != "" and isinstance(self.tokenizer, str),
                  "init='text' needs init_text (a non-empty string) and tokenizer (the model's tokenizer path)")
        check(not self.targets, "prompt tuning has no targets: it adds tokens to the model's input")


class PromptDelta(ModelDelta):
    def __init__(self, model: nn.Module, config: PromptTuningConfig, init: bool = True):
        super().__init__()
        self.m = config.num_virtual_tokens
        # the model and its embedding are only looked at, not owned: not submodules of this delta
        object.__setattr__(self, "hf", hf_model(model, "prompt tuning"))
        self.vision = is_vision(self.hf.config)
        self.encoder_decoder = bool(getattr(self.hf.config, "is_encoder_decoder", False))
        if self.encoder_decoder and is_classifier(self.hf):
            raise TargetError(f"prompt tuning feeds the model inputs_embeds, which {type(self.hf).__name__} does not take "
                              "(it finds each sample's EOS token in input_ids): use prefix tuning or LoRA on it")
        if self.vision:
            object.__setattr__(self, "entry", _vit_embeddings(self.hf))
            width = self.entry.cls_token.shape[-1]
        else:
            object.__setattr__(self, "entry", self.hf.get_input_embeddings())
            width = self.entry.embedding_dim
            self.max_positions = max_positions(self.hf.config)
            if self.max_positions is not None and self.m >= self.max_positions:
                raise ConfigError(f"num_virtual_tokens={self.m} leaves no room for input: the model reads at most "
                                  f"{self.max_positions} positions; use fewer virtual tokens")
        dtype = (self.entry.cls_token if self.vision else self.entry.weight).dtype
        self.embedding = nn.Parameter(torch.zeros(self.m, width, dtype=dtype))
        if init:
            self._init(config)

    @torch.no_grad()
    def _init(self, config: PromptTuningConfig) -> None:
        if self.vision:
            bound = vpt_bound(self.hf.config, self.embedding.shape[1])
            self.embedding.uniform_(-bound, bound)
            return
        table = self.entry.weight
        if config.init == "random":
            self.embedding.normal_(0.0, float(table.float().std()))
            return
        ids = torch.randperm(table.shape[0])[: self.m] if config.init == "vocab" else _text_ids(config, table.shape[0])
        ids = ids.repeat(-(-self.m // len(ids)))[: self.m]  # fewer ids than m (short text, tiny vocabulary): cycle
        self.embedding.copy_(table[ids])

    def describe(self) -> str:
        return f"{self.m} soft tokens " + ("after [CLS]" if self.vision else "before the input")

    # -- hooks ----------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        if self.vision:
            self.hook(self.entry, pre=False, fn=self._after_vit_embeddings)
            return
        self._signature = inspect.signature(self.hf.forward)
        self.hook_call(self.hf, self._before_forward, self._after_forward)

    def _after_vit_embeddings(self, module, args, kwargs, out):
        prompt = self.embedding.to(out.dtype).expand(out.shape[0], -1, -1)
        return torch.cat([out[:, :1], prompt, out[:, 1:]], dim=1)

    def _before_forward(self, module, args, kwargs, frame):
        inputs = call_inputs(self._signature, args, kwargs, f"prompt adapter {self._name!r}")
        if cached_length(inputs):
            return (), self._continue(inputs)  # nothing to cut from this call's logits
        ids, embeds = inputs.pop("input_ids", None), inputs.get("inputs_embeds")
        if embeds is None:
            if ids is None:
                raise StateError(f"prompt adapter {self._name!r} needs input_ids or inputs_embeds")
            embeds = self.entry(ids)
        batch, length = embeds.shape[:2]
        if self.max_positions is not None and length + self.m > self.max_positions:
            raise ConfigError(f"the input has {length} tokens and the prompt {self.m}, more than the model's "
                              f"{self.max_positions} positions; truncate inputs to {self.max_positions - self.m} tokens")
        prompt = self.embedding.to(embeds.dtype).expand(batch, -1, -1)
        inputs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)

        def front(name, fill):
            value = inputs.get(name)
            if value is not None:
                pad = torch.full((batch, self.m), fill, dtype=value.dtype, device=value.device)
                inputs[name] = torch.cat([pad, value], dim=1)

        front("attention_mask", 1)
        front("token_type_ids", 0)
        if inputs.get("position_ids") is not None:
            inputs["position_ids"] = inputs["position_ids"] + self.m
            front("position_ids", 0)
            inputs["position_ids"][:, : self.m] = torch.arange(self.m)
        if inputs.get("cache_position") is not None:
            inputs["cache_position"] = torch.arange(self.m + length, device=embeds.device)
        labels = inputs.get("labels")
        token_level = not self.encoder_decoder and labels is not None and labels.dim() == 2 and labels.shape[1] == length
        if token_level:
            front("labels", -100)
        frame["cut"] = 0 if self.encoder_decoder else self.m + length
        return (), inputs

    def _continue(self, inputs: dict) -> dict:
        """A generation step after the first: the prompt is in the KV cache already, so only the mask
        and positions of the new tokens move by m."""
        mask = inputs.get("attention_mask")
        if mask is not None:
            inputs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], self.m), mask], dim=1)
        for name in ("position_ids", "cache_position"):
            if inputs.get(name) is not None:
                inputs[name] = inputs[name] + self.m
        return inputs

    def _after_forward(self, module, args, kwargs, out, frame):
        # token-level logits over prompt + input lose the prompt positions (not when the caller asked for
        # the last few positions only, as generate() does with logits_to_keep)
        total = frame.get("cut", 0)
        logits = getattr(out, "logits", None)
        if total and isinstance(logits, torch.Tensor) and logits.dim() == 3 and logits.shape[1] == total:
            out.logits = logits[:, self.m:]
        return out


def _vit_embeddings(hf: nn.Module) -> nn.Module:
    for module in hf.modules():
        if isinstance(getattr(module, "cls_token", None), nn.Parameter) and hasattr(module, "patch_embeddings"):
            return module
    raise TargetError(f"prompt tuning on {type(hf).__name__}: no ViT-style embeddings (cls_token + patch_embeddings)")


def _text_ids(config: PromptTuningConfig, vocab: int) -> torch.Tensor:
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
    except Exception as exc:  # noqa: BLE001 - any failure to find or read it is the same user error
        raise ConfigError(f"init='text': cannot load tokenizer {config.tokenizer!r} ({type(exc).__name__})") from None
    ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
    if not ids or max(ids) >= vocab:
        raise ConfigError(f"init_text {config.init_text!r} gives no token ids of this model's vocabulary ({vocab})")
    return torch.tensor(ids)


# -- Hugging Face PEFT's format: PROMPT_TUNING ---------------------------------------------------------

def _peft_table(am, name: str):
    delta = am.model_deltas[name]
    if delta.vision:
        raise ConfigError("PEFT's prompt tuning has no image-classification task type; save this adapter with "
                          "format='petkit'")
    table, hf = delta.embedding.detach(), delta.hf.config
    return table, {
        "token_dim": table.shape[1], "num_attention_heads": hf_int(hf, "num_attention_heads", "n_head", "num_heads"),
        "num_layers": hf_int(hf, "num_hidden_layers", "n_layer", "num_layers"), "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None, "tokenizer_name_or_path": None, "tokenizer_kwargs": None,
    }


def _add_from_peft(am, name: str, m: int, train_head, config: dict, folder) -> str:
    am.add(PromptTuningConfig(num_virtual_tokens=m, train_head=train_head), name, init=False)
    return f"{MODEL_KEY}.embedding"


PEFT = PromptFormat("PROMPT_TUNING", table=_peft_table, add=_add_from_peft, twin=("PromptTuningConfig", (
    "num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers")))


register(Method(
    name="prompt", config=PromptTuningConfig, kind="model", build=PromptDelta, layer_types=(), mergeable=False,
    spec="Lester et al. 2021 (arXiv 2104.08691); VPT-shallow for ViT (Jia et al. 2022)",
    summary="soft prompt tokens in front of the input (ViT: after [CLS])",
    peft=PEFT,
    # bench: prompt tuning wants large rates (Lester et al. train at 0.3 with Adafactor)
    bench=MethodDefaults({"num_virtual_tokens": 20}, (3e-3, 3e-2), "prompt"),
))
