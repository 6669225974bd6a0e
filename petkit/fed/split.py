"""Split learning of one encoder (SFPrompt's cut): the client runs the head (embeddings, prompts and the
first layers) and the tail (the last layers and the classifier), the server the frozen body between.

``SplitStep`` runs a training step the way a split deployment exchanges it, in one process: the head's
output is cut from the graph (what the client sends), the server runs the body on it and its output is
cut again (what the server sends back); the client's loss backward stops at that cut, the server
backpropagates the received gradient through the body, and the client finishes through the head.
Every cut tensor and gradient that would cross the link is counted. ``without_body`` runs the model
with the body skipped (the head's output feeds the tail), for SFPrompt's local-loss update and its
EL2N data pruning.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import torch
from torch import nn

from petkit.core.errors import ConfigError
from petkit.core.model import adapt
from petkit.methods.telly import TellyConfig
from petkit.models.structure import encoder_stack, hf_model, layer_stacks, replace_stack


def adapted(model: nn.Module, prompt_config, tail_layers: int):
    """The client's trainable model: prompts at the input, the tail trained in place (layer freezing
    below it), the task head trained in place with the tail."""
    depth = len(encoder_stack(hf_model(model, "SFPrompt"), "SFPrompt"))
    am = adapt(model, TellyConfig(k=depth - tail_layers), name="tail")
    am.add(dataclasses.replace(prompt_config, train_head=False), name="prompt")
    am.set_active(["tail", "prompt"])
    am.set_trainable("tail")  # adding the prompt froze it; the prompt stays trainable
    return am


class Split:
    def __init__(self, model: nn.Module, head_layers: int, tail_layers: int):
        self.model = model
        hf = hf_model(model, "split learning")
        self.stack = encoder_stack(hf, "split learning")
        n = len(self.stack)
        if head_layers < 1 or tail_layers < 1 or head_layers + tail_layers >= n:
            raise ConfigError(f"the cut needs head_layers >= 1, tail_layers >= 1 and at least one body layer "
                              f"between them; the model has {n} layers, got head {head_layers}, tail {tail_layers}")
        self.head_layers, self.tail_layers = head_layers, tail_layers
        self.stack_name = next(name for name, stack in layer_stacks(hf) if stack is self.stack)
        self.hf = hf

    def step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Forward and backward of one batch across the cut; returns (loss, bytes each way)."""
        sent: dict[str, torch.Tensor] = {}

        def cut(key):
            def hook(module, args, out):
                hidden = out[0] if isinstance(out, tuple) else out
                received = hidden.detach().requires_grad_(True)
                sent[key], sent[key + "_received"] = hidden, received
                return (received, *out[1:]) if isinstance(out, tuple) else received
            return hook

        handles = [self.stack[self.head_layers - 1].register_forward_hook(cut("activations")),
                   self.stack[len(self.stack) - self.tail_layers - 1].register_forward_hook(cut("body_output"))]
        try:
            out = self.model(**batch)
        finally:
            for h in handles:
                h.remove()
        out.loss.backward()                               # client: tail, up to the body's output
        body_grad = sent["body_output_received"].grad
        sent["body_output"].backward(body_grad)           # server: through the frozen body
        head_grad = sent["activations_received"].grad
        sent["activations"].backward(head_grad)           # client: through the head into the prompts
        size = lambda t: t.numel() * t.element_size()    # noqa: E731
        return out.loss.detach(), {"up": size(sent["activations"]) + size(body_grad),
                                   "down": size(sent["body_output"]) + size(head_grad)}

    @contextmanager
    def without_body(self):
        """The model with the body's layers removed while inside the block (head output → tail)."""
        n = len(self.stack)
        replace_stack(self.hf, self.stack_name, list(self.stack)[: self.head_layers] + list(self.stack)[n - self.tail_layers :])
        try:
            yield self.model
        finally:
            replace_stack(self.hf, self.stack_name, self.stack)


@torch.no_grad()
def el2n_scores(split: Split, batches) -> list[float]:
    """SFPrompt's pruning score per example: ‖softmax(tail(head(x))) − onehot(y)‖₂, body skipped."""
    scores: list[float] = []
    was_training = split.model.training
    split.model.eval()
    try:
        with split.without_body() as local:
            for batch in batches:
                probs = torch.softmax(local(**batch).logits.float(), dim=-1)
                onehot = torch.nn.functional.one_hot(batch["labels"], probs.shape[-1]).float()
                scores += (probs - onehot).norm(dim=-1).tolist()
    finally:
        split.model.train(was_training)
    return scores


def keep_hardest(scores: list[float], keep: float) -> list[int]:
    """Indices of the top `keep` fraction by score (hardest first kept), at least one."""
    if not 0 < keep <= 1:
        raise ConfigError(f"the keep ratio must be in (0, 1], got {keep}")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return sorted(order[: max(1, round(keep * len(scores)))])
