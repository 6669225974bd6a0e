"""The adapters a server can route to: which names are servable, which are resident on the model, and
which in-flight requests use them.

A name is *known* once registered (at start-up with --adapter, by /v1/load_lora_adapter, or found in
--adapter-dir). A known adapter is *resident* while its tensors sit on the model; the least recently
used ones that no request is using are evicted when a count or memory budget is exceeded, and loaded
again from their folder on the next request that names them. Unloading a name stops new requests at
once; its tensors go when the last request using it finishes. Only the engine thread calls the
methods that change the model; a lock guards the names and use counts, which HTTP handlers reserve.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path

from petkit.core.errors import AdapterFileError, ConfigError, PetkitError
from petkit.core.load import load
from petkit.core.model import AdaptedModel
from petkit.core.storage import CONFIG_NAME, LABELS_NAME, WEIGHTS_NAME, read_json


class UnknownAdapter(PetkitError, LookupError):
    pass


class Forbidden(PetkitError, PermissionError):
    pass


@dataclasses.dataclass
class Known:
    path: Path
    created: int
    labels: list[str] | None = None  # a classifier's class names (labels.json beside the weights)


class AdapterPool:
    def __init__(self, model: AdaptedModel, base_name: str, *, max_resident: int = 64,
                 max_bytes: int | None = None):
        if max_resident < 1:
            raise ConfigError(f"max_resident must be >= 1, got {max_resident}")
        self.model, self.base_name = model, base_name
        self.max_resident, self.max_bytes = max_resident, max_bytes
        self.known: dict[str, Known] = {}
        self.resident: OrderedDict[str, int] = OrderedDict()  # name -> bytes, least recently used first
        self.users: Counter[str] = Counter()
        self.leaving: dict[str, Known] = {}  # unloaded while in use: deleted when the last user releases it
        self.loads = 0
        self.evictions = 0
        self._lock = threading.Lock()

    # -- names ---------------------------------------------------------------------------------
    def route(self, name: str) -> str | None:
        """The adapter a request's `model` selects (None = the base); UnknownAdapter otherwise."""
        if name == self.base_name:
            return None
        if name not in self.known:
            served = [self.base_name, *sorted(self.known)]
            raise UnknownAdapter(f"The model `{name}` does not exist. Served: {', '.join(served)}")
        return name

    def reserve(self, name: str) -> str | None:
        """route(name), counted as in use until release(): an unload waits for it."""
        with self._lock:
            adapter = self.route(name)
            if adapter is not None:
                self.users[adapter] += 1
            return adapter

    def register(self, name: str, path: Path) -> None:
        """Make `name` servable from the adapter folder `path`, loading it now so a bad file fails here."""
        if not name or name == self.base_name:
            raise ConfigError(f"adapter name {name!r} is empty or names the base model")
        if name in self.known:
            raise ConfigError(f"an adapter named {name!r} is already loaded; unload it first")
        if name in self.leaving:
            raise ConfigError(f"the adapter {name!r} was unloaded but requests still use it; retry when they finish")
        require_safetensors(path)
        self._load(name, path)
        self.add_known(name, path)
        self._evict(keep=name)

    def add_known(self, name: str, path: Path) -> None:
        """Servable from now on; loaded on the first request that names it."""
        entry = Known(path, int(time.time()), read_labels(path))
        with self._lock:
            self.known[name] = entry

    def labels(self, name: str | None) -> list[str] | None:
        entry = None if name is None else self.known.get(name) or self.leaving.get(name)
        return entry.labels if entry else None

    def unload(self, name: str) -> None:
        with self._lock:
            if name not in self.known:
                raise UnknownAdapter(f"The adapter `{name}` is not loaded. "
                                     f"Loaded: {', '.join(sorted(self.known)) or 'none'}")
            entry = self.known.pop(name)
            if self.users[name]:
                self.leaving[name] = entry
                return
        self._drop(name)

    # -- use by requests (engine thread) ---------------------------------------------------------
    def ensure_resident(self, name: str | None) -> None:
        """Before a reserved request runs: its adapter's tensors on the model (loaded again if evicted)."""
        if name is None:
            return
        if name not in self.resident:
            with self._lock:
                entry = self.known.get(name) or self.leaving.get(name)
            if entry is None:  # cannot happen while the request holds its reservation; kept as a guard
                raise UnknownAdapter(f"The model `{name}` was unloaded")
            try:
                self._load(name, entry.path)
            except PetkitError:  # a folder that does not load is no longer offered (found lazily in --adapter-dir)
                with self._lock:
                    self.known.pop(name, None)
                raise
        self.resident.move_to_end(name)
        self._evict(keep=name)

    def release(self, name: str | None) -> None:
        if name is None:
            return
        with self._lock:
            self.users[name] -= 1
            if self.users[name] > 0:
                return
            del self.users[name]
            if name not in self.leaving:
                return
            del self.leaving[name]
        self._drop(name)

    # -- residency -----------------------------------------------------------------------------
    def resident_bytes(self) -> int:
        return sum(self.resident.values())

    def _load(self, name: str, path: Path) -> None:
        load(self.model, path, as_name=name)  # any failure: an AdapterFileError, the model unchanged
        if name in self.model.model_deltas:
            method = self.model.method_of(name).name
            self.model.delete(name)
            raise AdapterFileError(f"{method} adapters change the whole model's input, so requests for them cannot "
                                   f"share a batch with others; petkit serve serves weight and output deltas (LoRA, "
                                   f"DoRA, IA3, adapters ...)")
        self.resident[name] = sum(t.numel() * t.element_size() for t in self.model.adapter_parameters(name).values())
        self.loads += 1

    def _drop(self, name: str) -> None:
        if name in self.resident:
            del self.resident[name]
            self.model.delete(name)

    def _evict(self, keep: str) -> None:
        """Evict least recently used idle adapters until the count and byte budgets hold (never `keep`)."""
        for name in list(self.resident):
            over = len(self.resident) > self.max_resident or (
                self.max_bytes is not None and self.resident_bytes() > self.max_bytes)
            if not over:
                return
            if name != keep and not self.users[name]:
                self._drop(name)
                self.evictions += 1


def require_safetensors(path: Path) -> None:
    if not (path / CONFIG_NAME).is_file():
        raise AdapterFileError(f"{path} holds no {CONFIG_NAME}; not an adapter folder")
    if not (path / WEIGHTS_NAME).is_file():
        found = sorted(p.name for p in path.glob("adapter_model.*"))
        raise AdapterFileError(f"{path} holds no {WEIGHTS_NAME}" + (f" (found {found}; petkit serve loads "
                                                                    "safetensors only, never pickles)" if found else ""))


def read_labels(path: Path) -> list[str] | None:
    if not (path / LABELS_NAME).is_file():
        return None
    labels = read_json(path / LABELS_NAME).get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise AdapterFileError(f'{path / LABELS_NAME} must hold {{"labels": [class names in head order]}}')
    return labels


def resolve_under(root: Path, requested: str) -> Path:
    """The folder `requested` names inside `root` (relative paths are relative to root). Refuses `..`,
    symbolic links anywhere on the way, and anything outside root."""
    root = root.resolve()
    raw = Path(requested)
    if ".." in raw.parts:
        raise Forbidden(f"adapter path {requested!r} contains '..'")
    path = raw if raw.is_absolute() else root / raw
    try:
        path.relative_to(root)
    except ValueError:
        raise Forbidden(f"adapter path {requested!r} is outside the adapter directory {root}") from None
    if not path.is_dir():
        raise UnknownAdapter(f"No adapter found at {requested!r} in the adapter directory")
    if path.resolve() != path:  # resolve() follows every link on the way
        raise Forbidden(f"adapter path {requested!r} goes through a symbolic link")
    return path
