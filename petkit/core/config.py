"""Method configs: small frozen dataclasses that validate on construction.

Every method declares one `<Method>Config(AdapterConfig)`. Shared fields (which modules to target,
which to exclude, whether to train the task head) live here; the registry links a config class to
the method that builds its deltas.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from petkit.core.errors import ConfigError
from petkit.core.mapping import config_from_mapping, is_int


def _as_tuple(value, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ConfigError(f"{name} must be a string or a list of strings, got {type(value).__name__}") from None
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{name} must hold non-empty strings, got {item!r}")
    return items


@dataclass(frozen=True)
class AdapterConfig:
    """Fields every method shares.

    targets: module names, suffixes (`"query"`), regexes (`"re:.*layer\\.[0-3]\\..*query"`), role names
        (`"attn.q"`, `"mlp.out"`; see `petkit.core.roles`) or `"all-linear"` (every linear layer but
        the output head).
    exclude: the same kinds of patterns; a module matching any of them is left alone.
    train_head: train (and save with the adapter) the task head of a classification model, whole (e.g.
        RoBERTa's classifier.dense and classifier.out_proj, DistilBERT's pre_classifier and classifier):
        `"auto"` trains it when the model has a freshly added head (`classifier`, `score`, ...),
        True/False force it, a list of module names trains those parts of the head only.
    """

    method: ClassVar[str] = ""
    # Fields added after files were written, whose old behaviour is not the new default: a saved
    # config without the field reads it with this value (settings a user writes get the defaults).
    saved_defaults: ClassVar[dict[str, Any]] = {}
    targets: Any = ()
    exclude: Any = ()
    train_head: Any = "auto"

    def __post_init__(self):
        object.__setattr__(self, "targets", _as_tuple(self.targets, "targets"))
        object.__setattr__(self, "exclude", _as_tuple(self.exclude, "exclude"))
        if isinstance(self.train_head, (list, tuple)):
            object.__setattr__(self, "train_head", _as_tuple(self.train_head, "train_head"))
        elif self.train_head not in ("auto", True, False):
            raise ConfigError(f"train_head must be 'auto', True, False or a list of head modules, got {self.train_head!r}")
        self.validate()

    def validate(self) -> None:
        """Override to check method hyper-parameters; raise ConfigError with a plain message."""

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterConfig":
        """Build from a dict a user wrote (a `method` key is allowed and ignored): an unknown key is a
        ConfigError naming the closest field."""
        return cls._from_mapping(data, saved=False)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "AdapterConfig":
        """Build from a config an adapter file holds: fields it predates take `saved_defaults`, and
        unknown keys (from a newer petkit) are warned about and dropped, so the file still loads."""
        if isinstance(data, dict):
            data = {**{k: v for k, v in cls.saved_defaults.items() if k not in data}, **data}
        return cls._from_mapping(data, saved=True)

    @classmethod
    def _from_mapping(cls, data, saved: bool) -> "AdapterConfig":
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "method"}
        return config_from_mapping(cls, data, where=cls.method or cls.__name__, saved=saved)

    def replace(self, **changes) -> "AdapterConfig":
        return dataclasses.replace(self, **changes)


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds: keeps validate() bodies one line per rule."""
    if not condition:
        raise ConfigError(message)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_pos_int(value) -> bool:
    """The predicate method configs word their own messages around (`r must be a positive int, got 0`)."""
    return is_int(value) and value > 0


__all__ = ["AdapterConfig", "check", "is_number", "is_pos_int"]
