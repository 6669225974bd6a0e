"""The method registry: one entry per method, filled by `register(...)` in `petkit/methods/*`.

The registry imports no method: each method module registers itself when it is imported, and
`petkit/__init__.py` imports `petkit.methods` (every built-in method). Python runs that `__init__`
before any `petkit.*` module, so the built-ins are here before anyone can look one up. A method
defined elsewhere registers the same way, by being imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from petkit.core.config import AdapterConfig
from petkit.core.errors import ConfigError
from petkit.core.named_table import NamedTable

KINDS = ("weight", "output", "model", "selection", "head")


@dataclass(frozen=True)
class MethodDefaults:
    """What `petkit bench` runs a method with when the bench config says nothing else."""

    settings: dict = field(default_factory=dict)  # method config fields (the name is added by the bench)
    lrs: tuple[float, ...] = ()                    # learning-rate grid searched on dev (seed 0)
    family: str = ""                               # colour group in the plots


@dataclass(frozen=True)
class Method:
    """Everything the engine and the other layers need to know about a method (its one record).

    build(base_module, config, path, model) -> Delta   (None for selection/head kinds)
    build(model, config, init=...) -> ModelDelta       (model kind: see petkit/core/model_delta.py)
    default_targets: used when the config gives none (e.g. "all-norm" for LayerNorm tuning); a tuple, or
                     a function model -> tuple (LoRA: PEFT's default for the architecture). Patterns
                     the model lacks (a role it does not have) are skipped.
    select(model, config) -> paths   (selection kind, optional) the module or parameter paths to train,
                                     chosen by the method instead of from the config's targets
    before_step(am, name)            (optional) adds the adapter's once-per-step gradient terms (a
                                     regulariser that must act at its own strength whatever the
                                     accumulation or loss scale) to the gradients the optimizer is about
                                     to use; run by `AdaptedModel.before_optimizer_step`
    peft: how Hugging Face PEFT's files hold the method's adapters, None when they cannot: a
          `petkit.interop.peft_tuner.TunerFormat` or `petkit.interop.peft_prompt.PromptFormat`
          (`format='peft'` saving and loading, `petkit bench --against peft`, the PEFT type listed)
    bench: the settings, learning-rate grid and plot family `petkit bench` uses (None: the config's
           own defaults, the generic grid and the kind as family; see petkit/bench/defaults.py)
    The public name of the config is its class name: `petkit.<config.__name__>`.
    """

    name: str
    config: type[AdapterConfig]
    kind: str
    build: Callable | None
    layer_types: tuple
    mergeable: bool
    spec: str
    summary: str
    default_targets: tuple[str, ...] | Callable = ()
    select: Callable | None = None
    before_step: Callable | None = None
    peft: Any = None
    bench: MethodDefaults | None = None

    @property
    def peft_type(self) -> str | None:
        """The peft_type its PEFT files carry (what `petkit methods` and the README's table list)."""
        return self.peft.peft_type if self.peft is not None else None


_METHODS: NamedTable[Method] = NamedTable(
    "method", lambda name, known: f"unknown method {name!r}; known methods: {known}")


def register(method: Method) -> Method:
    if method.kind not in KINDS:
        raise ValueError(f"unknown kind {method.kind!r} for {method.name}")
    _METHODS.add(method.name, method)
    method.config.method = method.name
    return method


def get_method(name: str) -> Method:
    return _METHODS.get(name)


def method_for(config: AdapterConfig) -> Method:
    if not isinstance(config, AdapterConfig):
        raise ConfigError(f"expected a petkit method config (e.g. petkit.LoraConfig), got {type(config).__name__}")
    return get_method(type(config).method)


def all_methods() -> list[Method]:
    return _METHODS.all()


def config_from_dict(data: dict, saved: bool = False) -> AdapterConfig:
    """Rebuild a config from its dict (the `method` key picks the class); saved=True for one read
    from an adapter file, where fields the file predates take the config's `saved_defaults`."""
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise ConfigError("an adapter config must be a JSON object with a 'method' name")
    config = get_method(data["method"]).config
    return config.from_saved(data) if saved else config.from_dict(data)
