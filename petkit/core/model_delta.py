"""The contract of model-level methods: deltas that act on the whole model, not on one layer.

Prompt and prefix tuning, dynamic prompts and side networks change what the model reads (extra
tokens, extra keys and values) or add a network beside it. Such a delta owns its parameters and
installs hooks on modules of the base model; the engine (AdaptedModel) keeps it in `model_deltas`,
saves, loads, activates and removes it like any other adapter. Every hook goes through `hook()`, so
it runs only while its adapter is live (active, not disabled) and is removed by `release()`.

    attach(model)                 install the hooks (called once by the engine, after building)
    saved_tensors() / loaded()    what the adapter file holds (default: the state dict), and the hook
                                  run after a load copied into those tensors
    release()                     remove every hook (the engine calls it on delete/unload/rollback)

Values that one call's pre-hook hands to its post-hook (the call's inputs, how many logits to cut)
live in a frame of that call (`hook_call`), not in attributes of the delta, so a forward nested in
another (the model run again from inside its own forward) keeps its own.
    describe()                    one line for summaries
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from petkit.core.errors import StateError

MODEL_KEY = "(model)"  # key prefix of a model-level delta's tensors in adapter_parameters() and files


class ModelDelta(nn.Module):
    mergeable = False

    def __init__(self):
        super().__init__()
        self._handles: list = []
        self._is_live: Callable[[], bool] = lambda: True
        self._name = "default"

    def bind(self, name: str, is_live: Callable[[], bool]) -> None:
        """Set by the engine: the adapter's name and whether it takes part in the current forward."""
        self._name, self._is_live = name, is_live

    def attach(self, model: nn.Module) -> None:  # pragma: no cover
        raise NotImplementedError

    def hook(self, module: nn.Module, pre: bool, fn: Callable) -> None:
        """Register fn as a (pre-)forward hook with kwargs on module, active only while this adapter is live."""
        def guarded(*args):
            return fn(*args) if self._is_live() else None
        register = module.register_forward_pre_hook if pre else module.register_forward_hook
        self._handles.append(register(guarded, with_kwargs=True))

    def hook_call(self, module: nn.Module, before: Callable | None, after: Callable | None) -> CallFrames:
        """Hooks around each call of module with a frame (a dict) of that call: before(module, args,
        kwargs, frame) may return new (args, kwargs); after(module, args, kwargs, out, frame) may return a
        new out. Both run only while this adapter is live. The frame is opened before any other pre-hook
        of module and closed after after() even when the forward raises; `frames.top` is the innermost
        open one, for hooks deeper in the call."""
        frames = CallFrames()

        def open_(module, args, kwargs):
            frame = frames.open()
            return before(module, args, kwargs, frame) if before is not None and self._is_live() else None

        def close(module, args, kwargs, out):
            try:  # out is None only when the forward raised (PyTorch still runs always_call hooks)
                if after is not None and out is not None and self._is_live():
                    return after(module, args, kwargs, out, frames.top)
                return None
            finally:
                frames.close()
        self._handles.append(module.register_forward_pre_hook(open_, with_kwargs=True, prepend=True))
        self._handles.append(module.register_forward_hook(close, with_kwargs=True, always_call=True))
        return frames

    def describe(self) -> str:
        """One line for summaries: what this delta does to the model."""
        return type(self).__name__

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        return self.state_dict(keep_vars=True)

    def loaded(self) -> None:
        pass

    def release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class CallFrames:
    """The frames of a module's calls under way, innermost last (see ModelDelta.hook_call). Nothing
    outlives its call. (transformers checkpoints a layer's forward, not its hooks, so hooks on layers
    are not run again when backward recomputes a layer: no reader needs a closed frame.)"""

    def __init__(self):
        self._frames: list[dict] = []

    def open(self) -> dict:
        self._frames.append({})
        return self._frames[-1]

    def close(self) -> None:
        if self._frames:
            self._frames.pop()

    @property
    def current(self) -> dict | None:
        """The innermost open frame, or None between calls."""
        return self._frames[-1] if self._frames else None

    @property
    def top(self) -> dict:
        if not self._frames:
            raise StateError("no forward of this adapter's model is under way")
        return self._frames[-1]


def refuse_routing(method: str, name: str) -> StateError:
    return StateError(f"mixed-adapter batches (adapter_names=...) cannot route the {method} adapter {name!r}: it "
                      "changes the whole model's input, not one layer; run its samples as a separate batch")
