"""What `petkit serve` is told: the model, its adapters, limits and security settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from petkit.core.errors import ConfigError

TASKS = ("generate", "classify")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model: str                                   # alias (smollm2, minilm) or a local Hugging Face folder
    task: str = "generate"                       # generate: a causal LM; classify: a sequence classifier
    served_name: str | None = None               # the `model` name of the base (default: `model`)
    adapters: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> folder, loaded at start
    adapter_dir: str | None = None               # its sub-folders are servable by name; runtime loads only here
    allow_adapter_loading: bool = False          # mount /v1/load_lora_adapter and /v1/unload_lora_adapter
    api_key: str | None = None                   # Bearer token required on every route but /health
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32                          # sequences decoded (or texts classified) together
    max_waiting: int = 256                       # queued requests beyond the batch; more get 429
    max_resident: int = 64                       # adapters kept on the model (LRU beyond)
    max_adapter_mb: float | None = None          # memory budget of resident adapters (LRU beyond)
    max_model_len: int | None = None             # prompt + completion tokens (default: min(model's, 4096))
    max_tokens: int = 1024                       # cap on a request's max_tokens
    max_body_bytes: int = 1 << 20                # request bodies above this get 413
    max_inputs: int = 64                         # texts per /v1/classify request, prompts per completion
    prefill_tokens: int = 4096                   # prompt tokens admitted into one prefill forward
    num_labels: int | None = None                # classify: head size (default: read from the first adapter)
    threads: int | None = None                   # torch threads (default: torch's)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        for field in ("max_batch", "max_waiting", "max_resident", "max_tokens", "max_body_bytes", "max_inputs",
                      "prefill_tokens"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"max_model_len must be at least 2, got {self.max_model_len}")
        if self.allow_adapter_loading and not self.adapter_dir:
            raise ConfigError("runtime adapter loading needs --adapter-dir: adapters load only from folders inside it")
        if self.adapter_dir and not Path(self.adapter_dir).is_dir():
            raise ConfigError(f"--adapter-dir {self.adapter_dir} is not a folder")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ConfigError("--api-key must be at least 8 characters")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")

    @property
    def base_name(self) -> str:
        return self.served_name or self.model
