"""Meta-training the MEND editor: for a sampled edit, read (u, δ) from the base model's gradient on
the edit, let the editor make ΔW, and score the edited model on the edit's rephrasings (generality,
L_edit = target NLL) and on unrelated prompts (locality, L_loc = KL(p_W ‖ p_W̃)):
L = c_edit · L_edit + c_loc · L_loc. Only the editor and its edit rates learn; the base stays frozen.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass

import torch

from petkit.core.errors import ConfigError
from petkit.edit.apply import capture, edit_batch, edited_logits, vocab_size
from petkit.edit.data import completion_batch, joined, pad_id, text_batch
from petkit.edit.editor import MendEditor
from petkit.edit.losses import locality_kl, target_nll
from petkit.edit.targets import linear_modules


@dataclass(frozen=True)
class MendTrainConfig:
    """lr: Adam's for the editor (the paper's 1e-6 suits tens of thousands of steps; a few hundred on a
    CPU need more). lr_lr: for the edit rates α. c_edit, c_loc: the loss weights (config.yaml: 0.1, 1).
    grad_clip: the released code's 100."""

    steps: int = 300
    lr: float = 1e-4
    lr_lr: float = 1e-4
    c_edit: float = 0.1
    c_loc: float = 1.0
    edits_per_step: int = 1
    grad_clip: float = 100.0
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "edits_per_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        for name in ("lr", "lr_lr", "grad_clip"):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        for name in ("c_edit", "c_loc"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be a non-negative number, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def meta_loss(model, tokenizer, editor: MendEditor, edits, config: MendTrainConfig) -> dict[str, torch.Tensor]:
    """L = c_edit · L_edit(rephrasings) + c_loc · L_loc for one batch of edits, with its parts."""
    if any(not e.locality for e in edits):
        raise ConfigError("every training edit needs unrelated locality prompts (Edit.locality)")
    modules = linear_modules(model, editor.config.targets)
    factors, _ = capture(model, modules, edit_batch(model, tokenizer, edits))
    deltas = editor.deltas(factors)
    outer = completion_batch(tokenizer, [(r, e.target) for e in edits for r in (e.rephrasings or (e.prompt,))],
                             vocab_size(model))
    loc = text_batch(tokenizer, [p for e in edits for p in e.locality])
    with torch.no_grad():
        base_loc = model(input_ids=loc["input_ids"], attention_mask=loc["attention_mask"]).logits
    both = joined(outer, loc, pad_id(tokenizer))
    logits = edited_logits(model, deltas, both)
    n = outer["input_ids"].shape[0]
    width = loc["input_ids"].shape[1]
    l_edit = target_nll(logits[:n], both["labels"][:n])
    l_loc = locality_kl(base_loc, logits[n:, :width], loc["attention_mask"])
    return {"loss": config.c_edit * l_edit + config.c_loc * l_loc, "edit": l_edit, "loc": l_loc}


def train_editor(model, tokenizer, editor: MendEditor, edits, config: MendTrainConfig | None = None,
                 log=None) -> list[dict]:
    """Meta-train `editor` on `edits` (each with rephrasings and locality prompts) for config.steps;
    returns the per-step losses. `log(step, record)` is called every step when given."""
    config = config or MendTrainConfig()
    edits = list(edits)
    if len(edits) < config.edits_per_step:
        raise ConfigError(f"meta-training needs at least {config.edits_per_step} edits, got {len(edits)}")
    model.eval()
    model.requires_grad_(False)
    rates = [editor.edit_lrs]
    others = [p for p in editor.parameters() if p is not editor.edit_lrs]
    optimizer = torch.optim.Adam([{"params": others, "lr": config.lr}, {"params": rates, "lr": config.lr_lr}])
    rng = random.Random(config.seed)
    editor.train()
    history = []
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        parts = meta_loss(model, tokenizer, editor, rng.sample(edits, config.edits_per_step), config)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        norm = torch.nn.utils.clip_grad_norm_(editor.parameters(), config.grad_clip)
        optimizer.step()
        record = {"step": step, **{k: float(v.detach()) for k, v in parts.items()}, "grad_norm": float(norm),
                  "seconds": time.perf_counter() - start}
        if not math.isfinite(record["loss"]):
            raise ConfigError(f"meta-training diverged at step {step} (loss {record['loss']}); lower lr")
        history.append(record)
        if log:
            log(step, record)
    editor.eval()
    return history
