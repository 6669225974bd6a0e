"""A server's moving parts put together: the base model with its adapters, the tokenizer, the engine
thread and its runner, the metrics. The HTTP layer (app.py) only translates requests into calls here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from petkit.core.errors import ConfigError, PetkitError
from petkit.core.model import AdaptedModel
from petkit.serve.adapters import AdapterPool, require_safetensors, resolve_under
from petkit.serve.classify import Classifier
from petkit.serve.config import ServeConfig
from petkit.serve.decode import Decoder
from petkit.serve.engine import Engine
from petkit.serve.metrics import Metrics

DEFAULT_MAX_MODEL_LEN = 4096
log = logging.getLogger("petkit.serve")


class Service:
    def __init__(self, config: ServeConfig, model: nn.Module, tokenizer, root: str | None = None):
        """model: the base (an AdaptedModel or a plain transformers model, wrapped here); the adapters of
        config.adapters are loaded onto it, and config.adapter_dir's sub-folders become servable names."""
        self.config, self.tokenizer = config, tokenizer
        self.created = int(time.time())
        self.root = root or config.model
        self.model = (model if isinstance(model, AdaptedModel) else AdaptedModel(model)).eval()
        self.metrics = Metrics()
        self.max_model_len = _max_model_len(self.model, config)
        self.pool = AdapterPool(self.model, config.base_name, max_resident=config.max_resident,
                                max_bytes=None if config.max_adapter_mb is None else int(config.max_adapter_mb * 2**20))
        for name, path in config.adapters.items():
            self.pool.register(name, Path(path))
        if config.adapter_dir:
            self._discover(Path(config.adapter_dir))
        self.runner = self._runner()
        self.engine = Engine(self.runner, self.pool, self.metrics, max_batch=config.max_batch,
                             max_waiting=config.max_waiting, prefill_tokens=config.prefill_tokens)

    def _runner(self):
        pad = self.tokenizer.pad_token_id
        if self.config.task == "classify":
            config = self.model.base.config
            return Classifier(self.model, pad if pad is not None else 0,
                              getattr(config, "problem_type", None) == "multi_label_classification", self.metrics)
        return Decoder(self.model, self.tokenizer, self.eos_ids(), self.metrics)

    def eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.model.base, "generation_config", None), "eos_token_id", None)
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
        return {i for i in ids if i is not None}

    def _discover(self, root: Path) -> None:
        """Every adapter folder directly inside root becomes servable by its folder name, loaded on first use.
        A folder that is not servable (no safetensors, bad labels.json) is skipped with a warning."""
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
            if folder.name in self.pool.known or not (folder / "adapter_config.json").is_file():
                continue
            try:
                path = resolve_under(root, folder.name)
                require_safetensors(path)
                self.pool.add_known(folder.name, path)
            except PetkitError as exc:
                log.warning("petkit serve: not serving %s: %s", folder, exc)

    def resolve_load_path(self, requested: str) -> Path:
        return resolve_under(Path(self.config.adapter_dir), requested)

    def start(self) -> None:
        """Start the engine thread (the app's lifespan does, when the HTTP server starts)."""
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()

    def labels(self, adapter: str | None, width: int) -> list[str]:
        """Class names of an adapter's head: its labels.json, else the base config's id2label."""
        names = self.pool.labels(adapter)
        if names and len(names) == width:
            return names
        id2label = getattr(self.model.base.config, "id2label", None) or {}
        return [str(id2label.get(i, f"LABEL_{i}")) for i in range(width)]


def _max_model_len(model: AdaptedModel, config: ServeConfig) -> int:
    from petkit.models.structure import max_positions

    native = max_positions(model.base.config) or DEFAULT_MAX_MODEL_LEN
    if config.max_model_len is None:
        return min(native, DEFAULT_MAX_MODEL_LEN)
    if config.max_model_len > native:
        raise ConfigError(f"--max-model-len {config.max_model_len} exceeds the model's {native} positions")
    return config.max_model_len


def load_service(config: ServeConfig) -> Service:
    """The service for config.model (an alias or a local folder), with its tokenizer."""
    from petkit.core.files import num_labels_of
    from petkit.models import load_model, load_tokenizer
    from petkit.models.loading import resolve

    tokenizer = load_tokenizer(config.model)
    if config.task == "classify":
        num_labels = config.num_labels
        if num_labels is None:
            first = next(iter(config.adapters.values()), None) or _first_in(config.adapter_dir)
            num_labels = num_labels_of(first) if first else None
        model = load_model(config.model, task="classification", num_labels=num_labels)
    else:
        model = load_model(config.model, task="causal_lm")
    return Service(config, model, tokenizer, root=str(resolve(config.model)))


def _first_in(adapter_dir: str | None) -> Path | None:
    if not adapter_dir:
        return None
    return next((p for p in sorted(Path(adapter_dir).iterdir()) if (p / "adapter_config.json").is_file()), None)
