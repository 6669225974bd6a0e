"""One way to build a config from a mapping (YAML, JSON, `-m`/`-t`/`-s` flags, a Python dict).

Every `from_dict` goes through `config_from_mapping`: a key the config does not have is an error
that names the closest valid key, since a misspelt setting that is silently dropped trains with the
default. The one exception is a config read back from a saved file (`saved=True`): a newer petkit may
have written keys this one lacks, so they are warned about and dropped and the file still loads.
`int_at_least` is the one integer check of the run configs (bench, train, federated).
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Iterable, Mapping

from petkit.core.errors import ConfigError


def field_names(cls) -> tuple[str, ...]:
    """The keys a dataclass takes: its fields that its constructor accepts."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def closest(key: str, known: Iterable[str]) -> str | None:
    """The valid key a misspelt one most likely meant, or None when nothing is close."""
    known = list(known)
    # A spelled-out name of an abbreviated key (learning_rate -> lr) or the reverse (bs -> batch_size):
    # difflib scores those low, a user means them often.
    initials = {_initials(k): k for k in known if "_" in k}
    if "_" in key and _initials(key) in known:
        return _initials(key)
    if key in initials:
        return initials[key]
    matches = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _initials(key: str) -> str:
    return "".join(part[0] for part in key.split("_") if part)


def check_keys(data: Mapping, known: Iterable[str], *, where: str, saved: bool = False) -> dict:
    """`data` as a dict when every key is known. An unknown key raises ConfigError naming the closest
    known key; with saved=True (a file a newer petkit may have written) it is warned about and dropped."""
    known = sorted(known)
    unknown = sorted(str(k) for k in data if k not in known)
    if not unknown:
        return dict(data)
    if saved:  # not a typo but a newer file: nothing to suggest
        warnings.warn(f"{where} settings: ignoring unknown keys {unknown} (written by a newer petkit?)", stacklevel=2)
        return {k: v for k, v in data.items() if k in known}
    guesses = {k: g for k in unknown if (g := closest(k, known))}
    if len(unknown) == 1 and guesses:
        hint = f" (did you mean {guesses[unknown[0]]!r}?)"
    elif guesses:
        hint = " (did you mean " + ", ".join(f"{g!r} for {k!r}" for k, g in guesses.items()) + "?)"
    else:
        hint = ""
    raise ConfigError(f"unknown {where} settings {unknown}{hint}; known: {', '.join(known)}")


def config_from_mapping(cls, data, *, where: str, keys: Iterable[str] | None = None, saved: bool = False):
    """Build the (frozen) dataclass `cls` from the mapping `data` whose keys are `keys` (default: the
    fields of `cls`); `where` names the settings in messages ("train", "merge", "lora", ...)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} settings must be a mapping, got {type(data).__name__}")
    data = check_keys(data, field_names(cls) if keys is None else keys, where=where, saved=saved)
    try:
        return cls(**data)
    except TypeError as exc:  # a value of a type no field check expected
        raise ConfigError(f"invalid {where} settings: {exc}") from None


def is_int(value) -> bool:
    # bool is an int subclass; `epochs=True` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def int_at_least(name: str, value, minimum: int = 1, hint: str = "") -> int:
    """`value` when it is an integer >= minimum; else ConfigError (hint is added to the too-small message)."""
    if not is_int(value):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}{hint}")
    return value


__all__ = ["check_keys", "closest", "config_from_mapping", "field_names", "int_at_least", "is_int"]
