"""IDPT: instance-aware dynamic prompts (Zha et al., ICCV 2023, arXiv 2304.07221), for text and
vision encoders.

Before the last K blocks (K = 1: the paper's best placement), a generator reads the tokens entering
block L − K and emits m prompt tokens for this sample, put right after position 0 and read by the
remaining blocks:

    p = DGCNN(tokens) + e_pos                                                   (m × d)

DGCNN (`generator="edgeconv"`, the paper's; see petkit/methods/edgeconv.py): three EdgeConv layers
on the k-nearest-neighbour graph of the tokens in feature space (k = 20), then a global max-pool.
As in the official code it reads the tokens after position 0 (Point-MAE: the patch tokens, not
[CLS]). e_pos: the prompts' learnable position embedding (N(0, 0.02²); trained here, frozen by the
official code's name filter, which the specification calls unintended).

The paper's head (`head="idpt"`) reads the final features (the encoder's output: after ViT's final
LayerNorm, BERT's last layer) of position 0, of the prompts and of a max-pool over the tokens:

    logits = MLP([x_0 ; x_p1 … x_pm ; maxpool_tokens x])    (2+m)·d → 256 → 256 → labels,
                                                           each hidden Linear + BN + ReLU + Dropout 0.5

and replaces the model's logits (the loss is recomputed from them by the model's rule); the
model's own head is then not read and not trained (train_head "auto" resolves to False). Position
0 is the model's "CLS": [CLS] in BERT-style tokenizers, <s> in RoBERTa's, ViT's class token; the
encoders IDPT accepts all put their summary token there. The official code has no padding (a point
cloud is always 128 groups); here padding tokens are no node and no neighbour of the kNN graph, are
in no batch-norm statistic and in neither max-pool (the generator's nor the head's), and the
prompts attend to what position 0 attends to, so padding never changes a sample's logits.

`generator="mlp"` is petkit's first stand-in, `p = W_2 maxpool(GELU(LN(Y) W_1 + b_1)) + b_2 + e_pos`
over all tokens, and `head="model"` lets the model's own head read its own positions (prompts are
dropped after the last block). An adapter file written before these two fields existed holds that
stand-in, so a saved config without them loads as generator="mlp", head="model"; a config written
by hand gets the paper's defaults.

Encoders only (BERT-style, ViT; see DVPT); head="idpt" needs a sequence or image classifier. On
MiniLM (16 × 64 tokens) a training step costs about 1.2× LoRA's (q, v, r = 8) at k = 20, h = d.
Trainable (edgeconv, h = generator_hidden or d, c = head_hidden, C labels):
2dh + 4h·h + 3·2h (EdgeConv and their BNs) + 3h·md + 2md (fuse and its BN) + m·d (e_pos)
+ (2+m)d·c + c + 2c + c² + c + 2c + c·C + C (head). Not identity at init; not mergeable.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from petkit.core.config import AdapterConfig, check, is_number, is_pos_int
from petkit.core.errors import ConfigError, TargetError
from petkit.core.model_delta import ModelDelta
from petkit.core.registry import Method, MethodDefaults, register
from petkit.methods.edgeconv import DgcnnGenerator
from petkit.models.calls import PaddingReader, call_inputs
from petkit.models.heads import is_classifier, with_logits
from petkit.models.structure import encoder_stack, hf_model, hidden_size, own_layers
from petkit.models.taps import hidden_of, output_hidden, with_hidden, with_output_hidden

GENERATORS = ("edgeconv", "mlp")
HEADS = ("idpt", "model")


@dataclass(frozen=True)
class IdptConfig(AdapterConfig):
    """num_virtual_tokens: m prompts per sample. late_layers: K, the blocks that read them.
    generator: edgeconv (the paper's DGCNN) or mlp (petkit's first stand-in). generator_hidden: h,
    the generator's width (None: the model's). neighbors: k of the kNN graph (edgeconv).
    head: idpt (the paper's head on [CLS ; prompts ; max-pool of the tokens]) or model (the model's
    own head). head_hidden, head_dropout: the idpt head's two hidden layers.
    A saved config without generator / head predates them: it loads as mlp / model."""

    saved_defaults: ClassVar[dict[str, Any]] = {"generator": "mlp", "head": "model"}
    num_virtual_tokens: int = 1
    late_layers: int = 1
    generator: str = "edgeconv"
    generator_hidden: int | None = None
    neighbors: int = 20
    head: str = "idpt"
    head_hidden: int = 256
    head_dropout: float = 0.5

    def __post_init__(self):
        if self.head == "idpt" and self.train_head == "auto":
            object.__setattr__(self, "train_head", False)  # the model's own head is not read
        super().__post_init__()

    def validate(self):
        for name in ("num_virtual_tokens", "late_layers", "neighbors", "head_hidden"):
            check(is_pos_int(getattr(self, name)), f"{name} must be a positive integer, got {getattr(self, name)!r}")
        check(self.generator_hidden is None or is_pos_int(self.generator_hidden),
              f"generator_hidden must be a positive integer or null, got {self.generator_hidden!r}")
        check(self.generator in GENERATORS, f"generator must be one of {', '.join(GENERATORS)}, got {self.generator!r}")
        check(self.head in HEADS, f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        check(is_number(self.head_dropout) and 0 <= self.head_dropout < 1,
              f"head_dropout must be in [0, 1), got {self.head_dropout!r}")
        check(not (self.head == "idpt" and self.train_head is True),
              "train_head=True trains the model's own head, which head='idpt' does not read; use head='model'")
        check(not self.targets, "IDPT has no targets: its prompts enter before the last blocks")


class IdptDelta(ModelDelta):
    """What both generators share: the prompts go in before the late blocks and out after them, and
    the paper's head reads the final features. Subclasses define generate_prompts."""

    def __init__(self, model: nn.Module, config: IdptConfig, init: bool = True):
        super().__init__()
        object.__setattr__(self, "hf", hf_model(model, "IDPT"))
        stack = own_layers(self.hf, encoder_stack(self.hf, "IDPT"), "IDPT")
        if config.late_layers > len(stack):
            raise ConfigError(f"late_layers={config.late_layers} is more than the model's {len(stack)} layers")
        object.__setattr__(self, "late", list(stack)[len(stack) - config.late_layers:])
        self.d, self.m = hidden_size(self.hf.config), config.num_virtual_tokens
        self.hidden = config.generator_hidden or self.d
        self.position = nn.Parameter(torch.randn(self.m, self.d) * 0.02)
        self.head = _paper_head(self.hf, config, self.d, self.m) if config.head == "idpt" else None

    def describe(self) -> str:
        head = "; its own head reads [CLS ; prompts ; max-pool]" if self.head is not None else ""
        return f"{self.m} instance prompt token(s) from {self.source} before the last {len(self.late)} layer(s){head}"

    def generate_prompts(self, tokens: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        """m prompts per sample (b × m × d) from the tokens entering the first late layer (b × n × d,
        position 0 included) and their padding (b × n bool, or None)."""
        raise NotImplementedError

    def attach(self, model: nn.Module) -> None:
        # the base model (BertModel, ViTModel), which every path to the layers goes through
        self.inputs = PaddingReader(self.hook, self.hf.base_model, f"IDPT adapter {self._name!r}")
        self.hook(self.late[0], pre=True, fn=self._insert)
        for layer in self.late[1:]:
            self.hook(layer, pre=True, fn=self._widen)
        if self.head is None:
            self.hook(self.late[-1], pre=False, fn=self._drop)
        else:  # the prompts stay to the encoder's output, where the head reads their final features
            self._signature = inspect.signature(self.hf.forward)
            self._calls = self.hook_call(self.hf, self._read_labels, self._replace_logits)
            self.hook(self.hf.base_model, pre=False, fn=self._read_final)

    def _insert(self, module, args, kwargs):
        tokens = hidden_of(args, kwargs)
        prompts = self.generate_prompts(tokens, self.inputs.padding).to(tokens.dtype)
        tokens = torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], dim=1)
        args, kwargs = self._widen(module, args, kwargs)
        return with_hidden(args, kwargs, tokens)

    def _widen(self, module, args, kwargs):
        """The layer's per-position inputs get the m prompt positions right after position 0, as copies
        of position 0's: the (batch, 1, query, key) mask (the prompts see, and are seen, as position 0
        is: never padding, whichever way the model encodes its mask) and DeBERTa's relative positions
        (the real tokens keep theirs)."""
        if len(args) > 1:
            if args[1] is not None:
                args = (args[0], _at_prompts(args[1], self.m), *args[2:])
        elif kwargs.get("attention_mask") is not None:
            kwargs = {**kwargs, "attention_mask": _at_prompts(kwargs["attention_mask"], self.m)}
        if isinstance(kwargs.get("relative_pos"), torch.Tensor):
            kwargs = {**kwargs, "relative_pos": _at_prompts(kwargs["relative_pos"], self.m)}
        return args, kwargs

    def _drop(self, module, args, kwargs, out):
        return with_output_hidden(out, self._without_prompts(output_hidden(out)))

    def _without_prompts(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([hidden[:, :1], hidden[:, 1 + self.m:]], dim=1)

    # -- the paper's head ---------------------------------------------------------------------------
    def head_input(self, final: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        """[x_0 ; x_p1 … x_pm ; max over the tokens] from the encoder's output with the prompts
        (b × (1 + m + n − 1) × d) and the call's padding (b × n, or None)."""
        tokens = final[:, 1 + self.m:]
        if padding is not None:
            tokens = tokens.masked_fill(padding[:, 1:, None], float("-inf"))
        pooled = tokens.amax(dim=1)
        pooled = pooled.masked_fill(pooled == float("-inf"), 0.0)  # a sample of position 0 alone
        return torch.cat([final[:, 0], final[:, 1:1 + self.m].flatten(1), pooled], dim=-1)

    def _read_labels(self, module, args, kwargs, frame):
        frame["labels"] = call_inputs(self._signature, args, kwargs, f"IDPT adapter {self._name!r}").get("labels")

    def _read_final(self, module, args, kwargs, out):
        final = out.last_hidden_state
        self._calls.top["features"] = self.head_input(final, self.inputs.padding)
        out.last_hidden_state = self._without_prompts(final)  # the output keeps the model's own shape
        return out

    def _replace_logits(self, module, args, kwargs, out, frame):
        return with_logits(out, self.head(frame["features"]), frame["labels"], self.hf.config)


class IdptEdgeConvDelta(IdptDelta):
    """The paper's generator: DGCNN on the tokens after position 0."""

    def __init__(self, model: nn.Module, config: IdptConfig, init: bool = True):
        super().__init__(model, config, init)
        self.generator = DgcnnGenerator(self.d, self.hidden, self.m, config.neighbors)
        self.source = f"a kNN-graph EdgeConv generator (k={config.neighbors})"

    def generate_prompts(self, tokens, padding):
        valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device) if padding is None else ~padding
        return self.generator(tokens[:, 1:], valid[:, 1:]) + self.position


class IdptMlpDelta(IdptDelta):
    """petkit's first stand-in: a token-wise MLP, then a max-pool over all tokens (position 0 too).
    Its tensors keep the names files written before the EdgeConv generator hold."""

    def __init__(self, model: nn.Module, config: IdptConfig, init: bool = True):
        super().__init__(model, config, init)
        self.norm = nn.LayerNorm(self.d)
        self.read = nn.Linear(self.d, self.hidden)
        self.emit = nn.Linear(self.hidden, self.m * self.d)
        self.source = "a token-wise MLP generator"

    def generate_prompts(self, tokens, padding):
        features = nn.functional.gelu(self.read(self.norm(tokens)))
        if padding is not None:
            features = features.masked_fill(padding[..., None], float("-inf"))
        pooled = features.amax(dim=1)
        return self.emit(pooled).view(-1, self.m, tokens.shape[-1]) + self.position


def _paper_head(hf: nn.Module, config: IdptConfig, d: int, m: int) -> nn.Sequential:
    if not is_classifier(hf):
        raise TargetError(f"IDPT's head (head='idpt') replaces a sequence or image classifier's logits; "
                          f"{type(hf).__name__} is not one: use head='model' to keep the model's own head")
    width, drop = config.head_hidden, config.head_dropout
    return nn.Sequential(nn.Linear((2 + m) * d, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(drop),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(drop),
                         nn.Linear(width, hf.config.num_labels))


def _at_prompts(table: torch.Tensor, m: int) -> torch.Tensor:
    """A (…, query, key) table with m copies of position 0's column after it, and of its row where
    the table has one row per query."""
    table = torch.cat([table[..., :1], table[..., :1].expand(*table.shape[:-1], m), table[..., 1:]], dim=-1)
    if table.shape[-2] > 1:
        first = table[..., :1, :]
        table = torch.cat([first, first.expand(*table.shape[:-2], m, -1), table[..., 1:, :]], dim=-2)
    return table


def build(model: nn.Module, config: IdptConfig, init: bool = True) -> IdptDelta:
    return (IdptMlpDelta if config.generator == "mlp" else IdptEdgeConvDelta)(model, config, init)


register(Method(
    name="idpt", config=IdptConfig, kind="model", build=build, layer_types=(), mergeable=False,
    spec="Zha et al., ICCV 2023 (arXiv 2304.07221); official code zyh16143998882/ICCV23-IDPT",
    summary="instance-aware prompts: a kNN-graph EdgeConv generator reads each sample's tokens and inserts a "
            "prompt before the last block; the head reads [CLS ; prompt ; max-pool]",
    # bench: the paper's DGCNN generator (k=20, width d) and head: a training step costs ~1.2x LoRA's on MiniLM
    bench=MethodDefaults({"num_virtual_tokens": 1}, (1e-3, 5e-3), "prompt"),
))
