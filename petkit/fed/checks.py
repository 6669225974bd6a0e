"""Checks several systems share, for their ``FedSystem.check``."""

from __future__ import annotations

from petkit.core.errors import ConfigError


def prompt_tuning_only(job) -> None:
    """The prompt systems tune soft prompts, and FedProx and DP belong to FedAvg's clients and server."""
    method = job.method.get("name") if isinstance(job.method, dict) else None
    if method != "prompt":
        raise ConfigError(f"{job.system} tunes soft prompts: method must be prompt tuning "
                          f"({{name: prompt, num_virtual_tokens: ...}}), got {job.method!r}")
    if job.proximal_mu or job.dp_clip is not None:
        raise ConfigError(f"FedProx and DP apply to systems fedavg and fedprox, not {job.system}")
