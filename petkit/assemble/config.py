"""`AssembleConfig`: one assembling run (data, the target and meta models built from scratch, each
phase's steps), and the models it describes.

No pre-trained weights are read: the target (depth D) and the meta model (one block per module, same
width) are built from a transformers config with random weights; only the tokenizer (its vocabulary) is
borrowed from a named model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from petkit.core.errors import ConfigError
from petkit.core.mapping import config_from_mapping, int_at_least

from .modules import equal_depths


@dataclass(frozen=True)
class AssembleConfig:
    """data: a petkit dataset name or file; tokenizer: a model alias or folder whose tokenizer is used;
    model_type: a transformers model type (built with AutoModelForSequenceClassification); depth, width,
    heads, ffn: the target; num_modules: K; model_options: more config fields for both models.
    Steps are optimizer steps of each phase: meta (PT), each incubation (MT), fine-tuning (FT).
    finetune_warmup is 0 as in the paper; eval_every > 0 scores dev every so many steps (the curve)."""

    data: str = "ag_news"
    tokenizer: str = "minilm"
    model_type: str = "bert"
    depth: int = 8
    num_modules: int = 4
    width: int = 128
    heads: int = 4
    ffn: int = 512
    model_options: dict = field(default_factory=dict)
    max_length: int = 64
    max_train: int | None = None
    max_eval: int | None = None
    data_seed: int = 0
    seed: int = 0
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    finetune_warmup: float = 0.0
    max_grad_norm: float = 1.0
    meta_steps: int = 300
    incubation_steps: int = 150
    finetune_steps: int = 300
    eval_every: int = 0
    output: str = "runs/assemble"

    def __post_init__(self):
        for name in ("depth", "width", "heads", "ffn", "max_length", "batch_size", "meta_steps", "incubation_steps",
                     "finetune_steps"):
            int_at_least(name, getattr(self, name), minimum=1)
        int_at_least("eval_every", self.eval_every, minimum=0)
        equal_depths(self.depth, self.num_modules, f"a target of depth {self.depth}")
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} must be a multiple of heads {self.heads}")

    @classmethod
    def from_dict(cls, data) -> "AssembleConfig":
        return config_from_mapping(cls, data, where="assemble")

    def to_dict(self) -> dict:
        return asdict(self)

    def train_config(self, steps: int, warmup: float | None = None):
        from petkit.train import TrainConfig
        return TrainConfig(lr=self.lr, max_steps=steps, batch_size=self.batch_size, eval_batch_size=64,
                           warmup=self.warmup if warmup is None else warmup, weight_decay=self.weight_decay,
                           max_grad_norm=self.max_grad_norm, seed=self.seed, eval_every_epoch=False)


def build_model(cfg: AssembleConfig, depth: int, num_labels: int, vocab_size: int, seed: int):
    """A randomly initialised classifier of `depth` blocks (init seeded: equal seeds give equal weights)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    options = {"hidden_size": cfg.width, "num_hidden_layers": depth, "num_attention_heads": cfg.heads,
               "intermediate_size": cfg.ffn, "vocab_size": vocab_size, "num_labels": num_labels,
               "max_position_embeddings": max(cfg.max_length, 16), **cfg.model_options}
    config = AutoConfig.for_model(cfg.model_type, **options)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config)


def target_model(cfg: AssembleConfig, num_labels: int, vocab_size: int):
    """The target (depth D). Every incubation job builds it with the same seed, so module k starts from
    the same weights in whichever job incubates it."""
    return build_model(cfg, cfg.depth, num_labels, vocab_size, seed=10_000 + cfg.seed)


def meta_model(cfg: AssembleConfig, num_labels: int, vocab_size: int):
    """The meta model: K blocks, one per module, same width as the target."""
    return build_model(cfg, cfg.num_modules, num_labels, vocab_size, seed=20_000 + cfg.seed)
