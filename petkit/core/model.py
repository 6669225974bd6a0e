"""AdaptedModel: the user's model plus named adapters, and the engine that manages them.

`petkit.adapt(model, config)` wraps the targeted modules *in place* (the model you pass is the one
that changes; `copy=True` leaves it untouched) and returns an AdaptedModel whose `base` is that model.
"""

from __future__ import annotations

import contextlib
import copy as copy_module
import inspect
import re
import warnings
from collections import defaultdict

import torch
from torch import nn

from petkit.core.aliases import alias_keys
from petkit.core.composition import BatchBlock, Composition, Stack, WeightedSum
from petkit.core.config import AdapterConfig
from petkit.core.dtypes import on_dtype_of
from petkit.core.errors import ConfigError, StateError, TargetError
from petkit.core.files import save_adapters
from petkit.core.fingerprint import fingerprint
from petkit.core.head import HeadDelta
from petkit.core.layer import AdaptedLayer
from petkit.core.module_types import QuantizedLinear
from petkit.core.model_delta import MODEL_KEY, refuse_routing
from petkit.core.registry import Method, method_for
from petkit.core.state import AdapterState
from petkit.core.summary import render_summary
from petkit.core.targeting import HEAD_NAMES, method_targets, resolve_targets, task_head_names
from petkit.core.unwrapped import base_parameters, named_base_modules, tied_parameter_ids

_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class AdaptedModel(nn.Module):
    def __init__(self, base: nn.Module):
        super().__init__()
        if isinstance(base, AdaptedModel):
            raise TypeError("already an AdaptedModel; call .add(config, name) on it")
        self.base = base
        self.train(base.training)
        self.state = AdapterState()
        self.base_fingerprint = fingerprint(base)
        self.model_deltas = nn.ModuleDict()            # model-level adapters (prompts, side networks) by name
        self.merge_errors = {}  # "adapter:layer" -> re-quantisation errors of merges into low-bit layers

    def __getattr__(self, name: str):
        """Parameters, buffers and submodules first (nn.Module's lookup), then the wrapped model's own
        attributes: `config`, `generation_config`, `get_input_embeddings`, `gradient_checkpointing_enable`,
        ... are what transformers' Trainer and TRL read off the model they train (PEFT does the same)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base")
            if base is None or name.startswith("__"):  # still in __init__ / unpickling, or a protocol probe
                raise
        try:
            return getattr(base, name)
        except AttributeError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}, nor has the "
                                 f"{type(base).__name__} it wraps") from None

    # -- building ---------------------------------------------------------------------------------
    def add(self, config: AdapterConfig, name: str = "default", *, trainable: bool = True, init: bool = True):
        """Add an adapter. `init=False` skips (possibly costly) initialisation: used when loading."""
        method = method_for(config)
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"adapter names use letters, digits, '_' and '-', got {name!r}")
        if name in self.state.configs:
            raise ConfigError(f"an adapter named {name!r} already exists; delete it or pick another name")
        paths: list[str] = []
        try:
            heads = self._heads_for(config, method)
            if method.kind == "model":
                self._add_model_delta(method, config, name, init)
            elif method.kind in ("weight", "output"):
                paths = method_targets(self.base, config, method, protected=heads)  # the head trains whole
                modules = dict(named_base_modules(self.base))
                built = {}
                try:
                    for p in paths:
                        built[p] = self._build(method, config, p, modules[p], init)
                except Exception:
                    for delta in built.values():  # none attached yet: undo what building did (hooks)
                        delta.release()
                    raise
                for p, delta in built.items():
                    self._attach(p, name, delta)
            elif method.kind == "selection":
                self._select(name, config)
            paths += heads  # before attaching, so a failure below is rolled back too
            for p in heads:
                self._attach(p, name, HeadDelta(self._wrap(p).base_layer))
        except Exception:
            self._remove_deltas(name, paths)
            raise
        self.state.modules[name] = paths
        self.state.configs[name] = config
        self.set_trainable(name, trainable)
        if not self.state.active:
            self.state.active = (name,)
        return self

    def _add_model_delta(self, method: Method, config, name: str, init: bool) -> None:
        delta = on_dtype_of(method.build(self.base, config, init=init), self.base)
        delta.bind(name, lambda: self._model_delta_live(name))
        self.model_deltas[name] = delta.train(self.base.training)
        delta.attach(self.base)

    def _model_delta_live(self, name: str) -> bool:
        state = self.state
        return not state.disabled and state.routes is None and name in state.active and name not in state.merged

    def _build(self, method: Method, config, path, base, init):
        try:
            delta = method.build(base, config, path, self.base, init=init)
        except ValueError as exc:
            raise TargetError(f"{method.name} cannot adapt {path!r}: {exc}") from None
        return on_dtype_of(delta, base)

    def _heads_for(self, config, method) -> list[str]:
        heads = task_head_names(self.base)
        if config.train_head is True and not heads:
            raise TargetError(f"train_head=True, but the model has no task head named {'/'.join(HEAD_NAMES)}")
        if isinstance(config.train_head, tuple):  # these parts of the head only (as a PEFT file saved them)
            stray = [h for h in config.train_head if h not in heads]
            if stray:
                raise TargetError(f"train_head names {stray}, which are not parts of the model's task head "
                                  f"({', '.join(heads) or 'none'})")
            return list(config.train_head)
        wanted = config.train_head is True or (config.train_head == "auto" and method.kind != "selection")
        return heads if wanted else []

    def _select(self, name, config):
        if self.state.selected:
            raise ConfigError("only one full fine-tuning (selection) adapter can be attached at a time")
        method = method_for(config)
        targets = config.targets or ("all",)
        if method.select is not None:  # the method picks its own modules (e.g. Telly: all but the bottom layers)
            modules = method.select(self.base, config)
        elif targets == ("all",):
            modules = [""]
        else:
            modules = resolve_targets(self.base, targets, config.exclude)
        params = [n for n in base_parameters(self.base) if any(m in ("", n) or n.startswith(m + ".") for m in modules)]
        self.state.selected[name] = params
        self.state.merged.append(name)  # its change lives in the base weights from the start

    def _attach(self, path: str, name: str, delta) -> None:
        layer = self._wrap(path)
        layer.deltas[name] = delta.train(layer.base_layer.training)

    def _replace_everywhere(self, old: nn.Module, new: nn.Module) -> None:
        # A module can sit at several paths (T5's `shared` is also `encoder.embed_tokens`): swap them all.
        for parent in list(self.base.modules()):
            for child_name, child in list(parent.named_children()):
                if child is old and parent is not new:
                    setattr(parent, child_name, new)

    def _wrap(self, path: str) -> AdaptedLayer:
        module = self.base.get_submodule(path)
        if isinstance(module, AdaptedLayer):
            return module
        layer = AdaptedLayer(module, path, self.state)
        self._replace_everywhere(module, layer)
        return layer

    def _unwrap_if_empty(self, path: str) -> None:
        layer = self.base.get_submodule(path)
        if isinstance(layer, AdaptedLayer) and len(layer.deltas) == 0:
            self._replace_everywhere(layer, layer.base_layer)

    def _remove_deltas(self, name: str, paths) -> None:
        if name in self.model_deltas:
            self.model_deltas[name].release()
            del self.model_deltas[name]
        for p in paths:
            layer = self.layer(p)
            if layer is not None and name in layer.deltas:
                layer.deltas[name].release()
                del layer.deltas[name]
                self._unwrap_if_empty(p)
        self.state.selected.pop(name, None)
        if name in self.state.merged:
            self.state.merged.remove(name)

    # -- lookup ---------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(self.state.configs)

    @property
    def active(self) -> tuple[str, ...]:
        return self.state.active

    def adapter_config(self, name: str = "default") -> AdapterConfig:
        self.state.check_names([name])
        return self.state.configs[name]

    def layer(self, path: str) -> AdaptedLayer | None:
        try:
            module = self.base.get_submodule(path)
        except AttributeError:
            return None
        return module if isinstance(module, AdaptedLayer) else None

    def layers(self, name: str):
        """(path, AdaptedLayer, Delta) for every module the adapter touches."""
        for p in self.state.modules.get(name, []):
            layer = self.layer(p)
            yield p, layer, layer.deltas[name]

    def deltas(self, name: str):
        """Every delta of one adapter: its layer deltas (task head included), then its model delta if any."""
        yield from (delta for _, _, delta in self.layers(name))
        if name in self.model_deltas:
            yield self.model_deltas[name]

    def method_of(self, name: str) -> Method:
        return method_for(self.adapter_config(name))

    def is_selection(self, name: str) -> bool:
        return name in self.state.selected

    def selected_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """A selection adapter's base parameters, by their names in the unwrapped model."""
        params = base_parameters(self.base)
        return {n: params[n] for n in self.state.selected.get(name, [])}

    def adapter_parameters(self, name: str, include_head: bool = True) -> dict[str, torch.Tensor]:
        """Every parameter (and saved buffer) of one adapter, keyed by `<module path>.<tensor name>`."""
        if name in self.state.selected:
            return dict(self.selected_parameters(name))
        out = {}
        for p, _, delta in self.layers(name):
            if not include_head and isinstance(delta, HeadDelta):
                continue
            for k, v in delta.saved_tensors().items():
                out[f"{p}.{k}"] = v
        if name in self.model_deltas:  # not a module path: a prefix no module of the base can have
            for k, v in self.model_deltas[name].saved_tensors().items():
                out[f"{MODEL_KEY}.{k}"] = v
        return out

    def num_parameters(self, name: str | None = None, include_head: bool = True, *, only_trainable: bool = False,
                       exclude_embeddings: bool = False) -> int:
        """One adapter's parameter count; without a name, transformers' `num_parameters` of the whole model
        (the signature Trainer calls for its FLOP count: only_trainable, exclude_embeddings)."""
        if name is None:
            if hasattr(self.base, "num_parameters"):
                extra = sum(p.numel() for p in self.model_deltas.parameters() if p.requires_grad or not only_trainable)
                return self.base.num_parameters(only_trainable=only_trainable,
                                                exclude_embeddings=exclude_embeddings) + extra
            return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)
        if name in self.state.selected:
            return sum(p.numel() for p in self.selected_parameters(name).values())
        return sum(t.numel() for delta in self.deltas(name) if include_head or not isinstance(delta, HeadDelta)
                   for t in delta.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def set_trainable(self, name: str, trainable: bool = True) -> None:
        """Freeze everything in the base, then mark `name`'s parameters trainable (or frozen)."""
        self.state.check_names([name])
        if trainable:
            for p in base_parameters(self.base).values():
                p.requires_grad_(False)
        if name in self.state.selected:
            for p in self.selected_parameters(name).values():
                p.requires_grad_(trainable)
        for delta in self.deltas(name):
            for p in delta.parameters():
                p.requires_grad_(trainable)

    # -- activation -----------------------------------------------------------------------------
    def set_active(self, names) -> None:
        """One name, a list (stacked in order), or a composition: Stack, Sum, WeightedSum, BatchSplit,
        Parallel (petkit.core.composition)."""
        composition = names if isinstance(names, Composition) else None
        names = (names,) if isinstance(names, str) else tuple(composition.leaves() if composition else names)
        self.state.check_names(names)
        if composition is not None:
            self._check_composition(composition)
        stray = [n for n in self.state.merged if n not in names and n not in self.state.selected]
        if stray:
            raise StateError(f"adapters {stray} are merged into the weights; unmerge() before changing the active set")
        if composition is not None and self.state.merged and not _merge_compatible(composition):
            raise StateError(f"adapters {self.state.merged} are merged into the weights, which {type(composition).__name__} "
                             "cannot reproduce; unmerge() first")
        self.state.active, self.state.composition = names, composition

    def _check_composition(self, composition: Composition) -> None:
        whole_model = [n for n in composition.leaves() if n in self.model_deltas]
        if whole_model and isinstance(composition, BatchBlock):
            n = whole_model[0]
            raise ConfigError(f"{type(composition).__name__} sends samples to adapters layer by layer, and "
                              f"{self.method_of(n).name} adapter {n!r} changes the whole model (what it reads, or a "
                              "network beside it), so it cannot take part: run it in a forward of its own")
        top_level = composition.children if isinstance(composition, Stack) else ()
        for n in whole_model:
            if n not in top_level:
                raise ConfigError(f"{self.method_of(n).name} adapter {n!r} acts on the whole model, so it can only be "
                                  "stacked at the top (Stack(prompt, Sum(a, b))), not combined inside layers")

    @contextlib.contextmanager
    def disabled(self):
        """Run the base model alone inside the block."""
        if self.state.selected:
            raise StateError("full fine-tuning changed the base weights in place, so they cannot be disabled; "
                             "use adapt(model, config, copy=True) to keep the original model")
        if self.state.merged:
            raise StateError(f"adapters {self.state.merged} are merged into the weights; unmerge() first")
        previous, self.state.disabled = self.state.disabled, True
        try:
            yield self
        finally:
            self.state.disabled = previous

    # -- merging --------------------------------------------------------------------------------
    def merge(self, names=None, requantize: bool = False) -> None:
        """Fold the adapters `names` (default: the active ones) into the base weights.

        Into a low-bit base (petkit.quantize) a merge re-quantises W + ΔW, which rounds away much of a
        small ΔW; it is refused unless requantize=True, and then `merge_errors` holds, per layer, the
        relative weight error and the share of the change lost to rounding (a warning sums them up).
        unmerge() restores the low-bit weights exactly."""
        if self.state.composition is not None and not _merge_compatible(self.state.composition):
            raise StateError(f"{type(self.state.composition).__name__} weighs or splits its adapters, which merging each "
                             "into the weights would not reproduce; merge them with petkit.merge.merge_adapters, or "
                             "set_active(name) first")
        names = self.state.active if names is None else ((names,) if isinstance(names, str) else tuple(names))
        self.state.check_names(names)
        todo = [n for n in dict.fromkeys(names) if n not in self.state.merged]
        for n in todo:  # every refusal before any merge: a refused merge changes nothing
            if n in self.model_deltas:
                raise StateError(f"{self.method_of(n).name} adapter {n!r} cannot be merged: it acts on the whole "
                                 "model (extra inputs or a side network), not on weights")
            tied = tied_parameter_ids(self.base)
            for p, layer, delta in self.layers(n):
                if not delta.mergeable:
                    raise StateError(f"{self.method_of(n).name} adapter {n!r} cannot be merged ({p})")
                if id(getattr(layer.base_layer, "weight", None)) in tied and delta.delta_weight(layer.base_layer) is not None:
                    raise StateError(f"the weight of {p} is tied to another module (e.g. the output head), so merging "
                                     f"adapter {n!r} would change both; keep it unmerged")
            low_bit = [p for p, layer, _ in self.layers(n) if isinstance(layer.base_layer, QuantizedLinear)]
            if low_bit and not requantize:
                raise StateError(f"adapter {n!r} sits on {len(low_bit)} low-bit layers (e.g. {low_bit[0]}): merging "
                                 "re-quantises W + ΔW and rounds much of the adapter's change away; keep it unmerged "
                                 "(it runs on top of the low-bit base), or pass requantize=True to merge anyway")
        for n in todo:
            low_bit = [p for p, layer, _ in self.layers(n) if isinstance(layer.base_layer, QuantizedLinear)]
            for p, layer, delta in self.layers(n):
                if isinstance(layer.base_layer, QuantizedLinear):
                    with layer.base_layer.merging() as record:
                        delta.merge(layer.base_layer)
                    self.merge_errors[f"{n}:{p}"] = record
                else:
                    delta.merge(layer.base_layer)
            self.state.merged.append(n)
            if low_bit:
                _warn_requantized(n, [self.merge_errors[f"{n}:{p}"] for p in low_bit])

    def fold(self, name: str = "default") -> None:
        """Compute away a training-only reparametrisation (prefix tuning's MLP): same outputs, fewer
        tensors; the adapter's config changes to describe what is left."""
        self.state.check_names([name])
        delta = self.model_deltas[name] if name in self.model_deltas else None
        if not hasattr(delta, "fold"):
            raise StateError(f"{self.method_of(name).name} adapter {name!r} has nothing to fold")
        trainable = any(p.requires_grad for p in delta.parameters())
        self.state.configs[name] = delta.fold(self.state.configs[name])
        self.set_trainable(name, trainable)

    def unmerge(self) -> None:
        for n in reversed([n for n in self.state.merged if n not in self.state.selected]):
            for p, layer, delta in self.layers(n):
                if isinstance(layer.base_layer, QuantizedLinear):
                    with layer.base_layer.merging(undo=True):
                        delta.unmerge(layer.base_layer)
                    self.merge_errors.pop(f"{n}:{p}", None)
                else:
                    delta.unmerge(layer.base_layer)
            self.state.merged.remove(n)

    def merge_and_unload(self, requantize: bool = False) -> nn.Module:
        """Merge the active adapters and return the plain base model (every wrapper removed)."""
        self.merge(requantize=requantize)
        for name in list(self.state.configs):
            self._remove_deltas(name, self.state.modules.get(name, []))
        self.state.configs.clear()
        self.state.active, self.state.merged, self.state.composition = (), [], None
        self.state.modules.clear()
        self.state.selected.clear()
        return self.base

    def delete(self, name: str) -> None:
        self.state.check_names([name])
        if name in self.state.merged and name not in self.state.selected:
            raise StateError(f"adapter {name!r} is merged; unmerge() before deleting it")
        self._remove_deltas(name, self.state.modules.pop(name, []))
        del self.state.configs[name]
        self.state.active = tuple(n for n in self.state.active if n != name)
        if self.state.composition is not None and name in self.state.composition.leaves():
            self.state.composition = None  # what is left runs stacked, as with a plain list

    # -- optimizer steps ------------------------------------------------------------------------
    def before_optimizer_step(self) -> None:
        """Add every trained adapter's once-per-step gradient terms (`Method.before_step`: SaRA's
        nuclear norm) to the gradients, as they stand just before ``optimizer.step()``.

        Such a term belongs to the step, not to a backward pass: put in the loss it would count once
        per accumulated micro-batch and be scaled with the loss (a GradScaler's factor). Run it once
        per step, after the gradients are unscaled (and clipped): `hook_optimizer` does exactly that.
        """
        for name in self.adapters:
            before = self.method_of(name).before_step
            trained = any(p.requires_grad for delta in self.deltas(name) for p in delta.parameters())
            if before is not None and trained and name not in self.state.merged:
                before(self, name)

    def hook_optimizer(self, optimizer: torch.optim.Optimizer):
        """Run `before_optimizer_step` at the start of every ``optimizer.step()`` (a step pre-hook):
        once per step however many micro-batches were accumulated, on the unscaled gradients
        (``GradScaler.step`` unscales before it calls ``step``), after any clipping. petkit's trainer
        does this itself; in your own loop call it once after building the optimizer. Returns the
        handle (``.remove()`` undoes it)."""
        return optimizer.register_step_pre_hook(lambda _optimizer, _args, _kwargs: self.before_optimizer_step())

    # -- forward --------------------------------------------------------------------------------
    def forward(self, *args, input_ids=None, attention_mask=None, labels=None, adapter_names=None, **kwargs):
        """The wrapped model's forward; positional and keyword inputs go to it as given. input_ids,
        attention_mask and labels are named so transformers' Trainer finds the labels (and reports an
        eval loss); they are passed on only when given. adapter_names: one adapter per sample."""
        named = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        kwargs.update({k: v for k, v in named.items() if v is not None})
        if adapter_names is None:
            args, kwargs, adapter_names = self._plan(args, kwargs)
        if adapter_names is None:
            return self.base(*args, **kwargs)
        with self.routing(adapter_names):
            return self.base(*args, **kwargs)

    @property
    def accepts_loss_kwargs(self) -> bool:
        """Whether forward passes `num_items_in_batch` on to a loss that uses it: what Trainer would decide
        for the wrapped model (its own flag, else whether its forward takes **kwargs). When true, Trainer
        leaves the loss undivided by gradient-accumulation steps."""
        own = getattr(self.base, "accepts_loss_kwargs", None)
        if isinstance(own, bool):
            return own
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(self.base.forward).parameters.values())

    def _plan(self, args, kwargs) -> tuple[tuple, dict, list[str] | None]:
        """With a BatchSplit or Parallel active: the inputs to run (Parallel copies the batch) and one
        adapter name per sample of them; otherwise the inputs as they are and None."""
        block = self.state.composition
        if not isinstance(block, BatchBlock) or self.state.disabled:
            return args, kwargs, None
        return block.plan(args, kwargs)

    def generate(self, *args, adapter_names=None, **kwargs):
        if adapter_names is None:
            args, kwargs, adapter_names = self._plan(args, kwargs)
        if adapter_names is None:
            return self.base.generate(*args, **kwargs)
        with self.routing(adapter_names):
            return self.base.generate(*args, **kwargs)

    @contextlib.contextmanager
    def routing(self, adapter_names):
        """Mixed-adapter batch: sample i runs with adapter_names[i] (None = the base alone)."""
        names = list(adapter_names)
        self.state.check_names({n for n in names if n is not None})
        whole_model = sorted({n for n in names if n in self.model_deltas})
        if whole_model:
            raise refuse_routing(self.method_of(whole_model[0]).name, whole_model[0])
        if self.state.merged:
            raise StateError("mixed-adapter batches need unmerged adapters; unmerge() first")
        if self.training and torch.is_grad_enabled() and any(getattr(m, "gradient_checkpointing", False) is True
                                                             for m in self.base.modules()):
            raise StateError("mixed-adapter batches cannot train with gradient checkpointing: backward recomputes "
                             "the layers after this batch's routing has ended, with other adapters; turn "
                             "checkpointing off or train one adapter per batch")
        groups: dict[str | None, list[int]] = defaultdict(list)
        for i, n in enumerate(names):
            groups[n].append(i)
        routes = {}
        for n, rows in groups.items():
            contiguous = rows == list(range(rows[0], rows[-1] + 1))
            routes[n] = slice(rows[0], rows[-1] + 1) if contiguous else torch.tensor(rows)
        previous = self.state.routes, self.state.route_names
        self.state.routes, self.state.route_names = routes, tuple(names)
        try:
            yield
        finally:
            self.state.routes, self.state.route_names = previous

    # -- state dict -----------------------------------------------------------------------------
    def state_dict(self, *args, **kwargs):
        """nn.Module's state dict without aliases: a tensor shared by several paths (tied input and output
        embeddings) appears once, under its first name, so safetensors can write it (see aliases.py)."""
        out = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for alias in alias_keys(self):
            out.pop(prefix + alias, None)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The aliases state_dict() left out take their tensor from the key it kept (runs before the children load).
        for alias, source in alias_keys(self).items():
            if prefix + alias not in state_dict and prefix + source in state_dict:
                state_dict[prefix + alias] = state_dict[prefix + source]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- reporting and files ---------------------------------------------------------------------
    def summary(self, print_it: bool = True) -> str:
        return render_summary(self, print_it)

    def save(self, path, format: str = "petkit", names=None) -> None:
        save_adapters(self, path, format=format, names=names)


def _merge_compatible(composition: Composition) -> bool:
    """Whether merging every adapter of the composition into the weights reproduces it: sums (Stack and
    Sum of weight deltas) do; weighting (WeightedSum) and routing the batch (BatchSplit, Parallel) do not."""
    if isinstance(composition, (WeightedSum, BatchBlock)):
        return False
    return all(isinstance(c, str) or _merge_compatible(c) for c in composition.children)


def adapt(model: nn.Module, config: AdapterConfig, name: str = "default", *, copy: bool = False,
          trainable: bool = True) -> AdaptedModel:
    """Attach an adapter. Wraps modules of `model` in place unless copy=True; returns the AdaptedModel.

    Passing an AdaptedModel adds another named adapter to it.
    """
    if copy:
        model = copy_module.deepcopy(model)
    am = model if isinstance(model, AdaptedModel) else AdaptedModel(model)
    return am.add(config, name, trainable=trainable)


def _warn_requantized(name: str, records) -> None:
    worst = max(records, key=lambda r: r.delta_error)
    warnings.warn(f"adapter {name!r} was merged into {len(records)} low-bit layers by re-quantising: relative weight "
                  f"error up to {max(r.weight_error for r in records):.3g}, and up to {worst.delta_error:.0%} of the "
                  "adapter's change lost to rounding (AdaptedModel.merge_errors has each layer's)", stacklevel=3)
