"""Editing a model: the weight change MEND (or a plain gradient step, the baseline) makes for a batch
of edits, applied in place and undone exactly."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from petkit.core.errors import ConfigError, StateError
from petkit.edit.data import Edit, completion_batch
from petkit.edit.editor import MendEditor
from petkit.edit.hooks import GradientFactors
from petkit.edit.losses import target_nll
from petkit.edit.targets import as_stored, linear_modules


def vocab_size(model: nn.Module) -> int:
    return model.get_output_embeddings().weight.shape[0]


def edit_batch(model, tokenizer, edits) -> dict[str, torch.Tensor]:
    """The edits' prompts followed by their targets, as one right-padded batch."""
    edits = list(edits)
    if not edits:
        raise ConfigError("no edits given: pass at least one (prompt, target)")
    if not all(isinstance(e, Edit) for e in edits):
        raise ConfigError("edits must be petkit.edit.Edit objects (Edit(prompt, target, ...))")
    return completion_batch(tokenizer, [(e.prompt, e.target) for e in edits], vocab_size(model))


def capture(model: nn.Module, modules: dict[str, nn.Module], batch: dict):
    """One forward and backward of the target NLL: ({path: (u, δ)} over the non-padding tokens,
    {path: ∂L/∂W in the layer's stored layout}). No .grad is written; the base stays frozen."""
    weights = [m.weight for m in modules.values()]
    before = [w.requires_grad for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)
        with GradientFactors(modules) as cap:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            grads = torch.autograd.grad(target_nll(logits, batch["labels"]), weights)
    finally:
        for w, flag in zip(weights, before):
            w.requires_grad_(flag)
    return cap.factors(batch["attention_mask"]), dict(zip(modules, grads))


def mend_deltas(model, tokenizer, editor: MendEditor, edits) -> dict[str, torch.Tensor]:
    """{path: ΔW (out, in)} that MEND makes for the edits (summed over them: a batched edit)."""
    modules = linear_modules(model, editor.config.targets)
    factors, _ = capture(model, modules, edit_batch(model, tokenizer, edits))
    return editor.deltas(factors)


def gradient_deltas(model, tokenizer, edits, targets, lr: float, steps: int = 1) -> dict[str, torch.Tensor]:
    """The fine-tuning baseline: `steps` plain gradient-descent steps with rate lr on the edits' target
    NLL, over the same weights MEND edits; {path: ΔW (out, in)}."""
    if not lr > 0 or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"fine-tuning needs lr > 0 and steps >= 1, got lr={lr!r}, steps={steps!r}")
    modules = linear_modules(model, targets)
    batch = edit_batch(model, tokenizer, edits)
    deltas = {name: torch.zeros_like(as_stored(m, m.weight)) for name, m in modules.items()}
    for _ in range(steps):
        with edited(model, deltas):
            _, grads = capture(model, modules, batch)
        for name, m in modules.items():
            deltas[name] = deltas[name] - lr * as_stored(m, grads[name])
    return deltas


def overrides(model: nn.Module, deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{param name: W + ΔW} for torch.func.functional_call (keeps the graph to the editor)."""
    modules = linear_modules(model, deltas)
    return {f"{name}.weight": m.weight + as_stored(m, deltas[name]) for name, m in modules.items()}


def edited_logits(model: nn.Module, deltas: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
    """The logits of the model with W + ΔW, without touching its weights."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    return functional_call(model, overrides(model, deltas), args=(), kwargs=kwargs).logits


class AppliedEdit:
    """Weight changes added to a model in place; `undo()` puts back the exact original weights."""

    def __init__(self, model: nn.Module, deltas: dict[str, torch.Tensor]):
        self.model, self.deltas = model, {k: v.detach() for k, v in deltas.items()}
        self._modules = linear_modules(model, deltas)
        self._originals = {name: m.weight.detach().clone() for name, m in self._modules.items()}
        self.active = True
        with torch.no_grad():
            for name, m in self._modules.items():
                m.weight.add_(as_stored(m, self.deltas[name]).to(m.weight.dtype))

    def undo(self) -> None:
        if not self.active:
            raise StateError("this edit was already undone")
        with torch.no_grad():
            for name, m in self._modules.items():
                m.weight.copy_(self._originals[name])
        self.active = False

    def __enter__(self) -> AppliedEdit:
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            self.undo()


def edited(model: nn.Module, deltas: dict[str, torch.Tensor]) -> AppliedEdit:
    """`with edited(model, deltas):` the model carries the change; it is undone on leaving."""
    return AppliedEdit(model, deltas)


def edit_model(model, tokenizer, editor: MendEditor, edits) -> AppliedEdit:
    """Apply MEND's edit for `edits` to the model in place; keep the result to undo it."""
    was = editor.training
    editor.eval()  # running statistics are read, not updated
    try:
        deltas = mend_deltas(model, tokenizer, editor, edits)
    finally:
        editor.train(was)
    return AppliedEdit(model, deltas)
