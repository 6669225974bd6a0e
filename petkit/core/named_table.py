"""A table of named records filled at import time by `register` calls: the method registry and the
federated-system registry are both one of these."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from petkit.core.errors import ConfigError

Record = TypeVar("Record")


class NamedTable(Generic[Record]):
    """what: the records' name in messages ("method"); unknown(name, known) -> the error's text."""

    def __init__(self, what: str, unknown: Callable[[str, str], str]):
        self.what, self._unknown = what, unknown
        self.records: dict[str, Record] = {}

    def add(self, name: str, record: Record) -> Record:
        if name in self.records:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self.records[name] = record
        return record

    def get(self, name: str) -> Record:
        if name not in self.records:
            raise ConfigError(self._unknown(name, ", ".join(sorted(self.records))))
        return self.records[name]

    def all(self) -> list[Record]:
        return [self.records[k] for k in sorted(self.records)]
