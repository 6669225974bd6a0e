"""One federated run described as data: it travels to every client inside the round's config."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from petkit.core.errors import ConfigError

FAULTS = ("drop", "wrong_shape", "wrong_keys", "nan")
SYSTEMS = ("fedpeft", "sfprompt", "pfedpg")


@dataclass
class FedJob:
    # fedpeft: the adapter (and head) trained on each client, averaged (FedAvg / FedProx, optional DP);
    # sfprompt: split training of prompts + tail with the server running the body (petkit/fed/sfprompt.py);
    # pfedpg: client-specific prompts from a server-side generator, private heads (petkit/fed/personal.py).
    system: str = "fedpeft"
    model: str = "minilm"
    data: str = "trec"
    method: dict = field(default_factory=lambda: {"name": "lora", "r": 8, "alpha": 16, "targets": ["attn.q", "attn.v"]})
    clients: int = 10
    split: str = "dirichlet"          # or "iid"
    alpha: float = 0.5                # Dirichlet concentration (split="dirichlet")
    rounds: int = 20
    fraction: float = 1.0             # share of the clients sampled for each round
    local_steps: int = 10             # optimizer steps per client per round
    batch_size: int = 16
    lr: float = 5e-3
    proximal_mu: float = 0.0          # FedProx's μ (0: FedAvg)
    dp_clip: float | None = None      # client-level DP: clip each update to this L2 norm ...
    dp_noise: float = 0.0             # ... and add noise of this multiplier to the mean
    dp_delta: float = 1e-5
    max_length: int = 64
    max_train: int | None = None
    max_eval: int | None = None
    seed: int = 0
    # SFPrompt: the cut (client layers at each end), the share of each client's examples kept by
    # pruning ("el2n": the hardest; "random": the ablation), and the local-loss steps (body skipped)
    # after the `local_steps` split steps.
    head_layers: int = 1
    tail_layers: int = 1
    keep: float = 0.5
    prune: str = "el2n"
    local_loss_steps: int = 5
    # pFedPG: the server's prompt generator (AdamW learning rate, attention heads).
    server_lr: float = 1e-3
    generator_heads: int = 4
    # Misbehaving clients for robustness tests and demos: {partition id: "drop" | "wrong_shape" |
    # "wrong_keys" | "nan"} (drop: the client fails mid-round; the others send a reply the server must reject).
    faults: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ConfigError(f"system must be one of {', '.join(SYSTEMS)}, got {self.system!r}")
        if self.system != "fedpeft":
            method = self.method.get("name") if isinstance(self.method, dict) else None
            if method != "prompt":
                raise ConfigError(f"{self.system} tunes soft prompts: method must be prompt tuning "
                                  f"({{name: prompt, num_virtual_tokens: ...}}), got {self.method!r}")
            if self.proximal_mu or self.dp_clip is not None:
                raise ConfigError(f"FedProx and DP apply to system fedpeft, not {self.system}")
        if not 0 < self.keep <= 1:
            raise ConfigError(f"keep (the share of examples SFPrompt's pruning keeps) must be in (0, 1], got {self.keep}")
        if self.prune not in ("el2n", "random"):
            raise ConfigError(f"prune must be 'el2n' or 'random', got {self.prune!r}")
        if self.server_lr <= 0:
            raise ConfigError(f"server_lr must be > 0, got {self.server_lr}")
        for name in ("head_layers", "tail_layers", "generator_heads"):
            _positive_int(name, getattr(self, name))
        if not isinstance(self.local_loss_steps, int) or self.local_loss_steps < 0:
            raise ConfigError(f"local_loss_steps must be an integer >= 0, got {self.local_loss_steps!r}")
        if self.split not in ("dirichlet", "iid"):
            raise ConfigError(f"split must be 'dirichlet' or 'iid', got {self.split!r}")
        for name in ("clients", "rounds", "local_steps", "batch_size"):
            _positive_int(name, getattr(self, name))
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction (clients per round) must be in (0, 1], got {self.fraction}")
        if self.lr <= 0 or self.proximal_mu < 0 or self.dp_noise < 0:
            raise ConfigError("lr must be > 0, proximal_mu and dp_noise >= 0")
        if self.dp_clip is not None and self.dp_clip <= 0:
            raise ConfigError(f"dp_clip must be > 0 (or null for no DP), got {self.dp_clip}")
        self.faults = {int(k): v for k, v in self.faults.items()}
        bad = {k: v for k, v in self.faults.items() if v not in FAULTS or not 0 <= k < self.clients}
        if bad:
            raise ConfigError(f"faults must map client ids 0..{self.clients - 1} to one of {FAULTS}, got {bad}")

    @property
    def per_round(self) -> int:
        return max(1, int(self.clients * self.fraction))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "FedJob":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown federated settings {unknown}; known: {', '.join(sorted(known))}")
        return cls(**data)


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
