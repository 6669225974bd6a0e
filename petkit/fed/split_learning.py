"""Split learning of one encoder, the one meaning of "split" in ``petkit.fed`` (SFPrompt's cut; the
division of the data among clients is a *partition*): the client runs the head (embeddings, prompts
and the first layers) and the tail (the last layers and the classifier), the server the frozen body
between.

``Split.step`` runs a training step the way a split deployment exchanges it, in one process: the head's
output is cut from the graph (what the client sends), the server runs the body on it and its output is
cut again (what the server sends back); the client's loss backward stops at that cut, the server
backpropagates the received gradient through the body, and the client finishes through the head.
Every cut tensor and gradient that would cross the link is counted. ``without_body`` runs the model
with the body skipped (the head's output feeds the tail), for SFPrompt's local-loss update and its
EL2N data pruning (``petkit/fed/systems/sfprompt.py``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from petkit.core.errors import ConfigError
from petkit.models.structure import encoder_stack, hf_model, layer_stacks, replace_stack


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
