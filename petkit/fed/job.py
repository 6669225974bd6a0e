"""One federated run described as data: it travels to every client inside the round's config.

A FedJob holds the run it federates (``run``: a ``petkit.pipeline.RunSpec`` with the model, data,
method, lengths and seed) and the federated settings. Its flat form, what users write in YAML or with
``-s key=value`` and what ``to_json`` gives, puts the run's fields beside the federated ones:
``FedJob(model="minilm", data="trec", clients=10)`` and ``FedJob.from_dict({...})`` both take it.
A job is frozen and hashable, so per-process caches key on the job itself.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from dataclasses import dataclass, field

from petkit.core.errors import ConfigError
from petkit.core.mapping import config_from_mapping, int_at_least
from petkit.pipeline import RunSpec

from .registry import get_system

FAULTS = ("drop", "wrong_shape", "wrong_keys", "nan")
PARTITIONS = ("dirichlet", "iid")
RUN_FIELDS = ("model", "data", "method", "max_length", "max_train", "max_eval", "seed")  # the RunSpec fields a job sets
RUN_DEFAULTS = {"data": "trec", "max_length": 64,
                "method": {"name": "lora", "r": 8, "alpha": 16, "targets": ["attn.q", "attn.v"]}}
RENAMED = {"split": "partition"}  # old key → new key ("split" now means split learning only)
# Old system names: each still works, with a warning, as the system chosen when none is named.
OLD_SYSTEMS = {"fedpeft": "'fedavg' ('fedprox' with proximal_mu > 0)"}


@dataclass(frozen=True, init=False)
class FedJob:
    run: RunSpec
    # A registered system (petkit/fed/systems/): fedavg, fedprox, sfprompt or pfedpg. Unset: fedavg, or
    # fedprox when proximal_mu > 0.
    system: str | None = None
    clients: int = 10
    partition: str = "dirichlet"      # how the training set is divided among the clients: "dirichlet" or "iid"
    alpha: float = 0.5                # Dirichlet concentration (partition="dirichlet")
    rounds: int = 20
    fraction: float = 1.0             # share of the clients sampled for each round
    local_steps: int = 10             # optimizer steps per client per round
    batch_size: int = 16
    lr: float = 5e-3
    proximal_mu: float = 0.0          # FedProx's μ
    dp_clip: float | None = None      # FedAvg / FedProx with client-level DP: clip each update to this L2 norm ...
    dp_noise: float = 0.0             # ... and add noise of this multiplier to the mean
    dp_delta: float = 1e-5
    # SFPrompt: the cut (client layers at each end), the share of each client's examples kept by
    # pruning ("el2n": the hardest; "random": the ablation), and the local-loss steps (body skipped)
    # after the `local_steps` split-learning steps.
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

    def __init__(self, run: RunSpec | None = None, **settings):
        for old, new in RENAMED.items():
            if old in settings:
                if new in settings:
                    raise ConfigError(f"give the federated setting {new!r} only, not also its old name {old!r}")
                warnings.warn(f"the federated setting {old!r} is now called {new!r}; {old!r} still works for now",
                              FutureWarning, stacklevel=2)
                settings[new] = settings.pop(old)
        ours = _own_fields()
        unknown = sorted(set(settings) - set(_flat_keys()))
        if unknown:
            raise TypeError(f"FedJob got unknown settings {unknown}")
        run_settings = {k: settings.pop(k) for k in RUN_FIELDS if k in settings}
        run = run if run is not None else RunSpec(**copy.deepcopy(RUN_DEFAULTS))
        object.__setattr__(self, "run", dataclasses.replace(run, **run_settings))
        for f in ours:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            object.__setattr__(self, f.name, settings.get(f.name, default))
        self._validate()

    def _validate(self) -> None:
        system = self.system
        if system in OLD_SYSTEMS:
            warnings.warn(f"system {system!r} is now called {OLD_SYSTEMS[system]}", FutureWarning, stacklevel=3)
            system = None
        if system is None:
            system = "fedprox" if self.proximal_mu else "fedavg"
        object.__setattr__(self, "system", system)
        get_system(system).check(self)
        if not 0 < self.keep <= 1:
            raise ConfigError(f"keep (the share of examples SFPrompt's pruning keeps) must be in (0, 1], got {self.keep}")
        if self.prune not in ("el2n", "random"):
            raise ConfigError(f"prune must be 'el2n' or 'random', got {self.prune!r}")
        if self.server_lr <= 0:
            raise ConfigError(f"server_lr must be > 0, got {self.server_lr}")
        for name in ("head_layers", "tail_layers", "generator_heads"):
            int_at_least(name, getattr(self, name))
        int_at_least("local_loss_steps", self.local_loss_steps, 0)
        if self.partition not in PARTITIONS:
            raise ConfigError(f"partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        for name in ("clients", "rounds", "local_steps", "batch_size"):
            int_at_least(name, getattr(self, name))
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction (clients per round) must be in (0, 1], got {self.fraction}")
        if self.lr <= 0 or self.proximal_mu < 0 or self.dp_noise < 0:
            raise ConfigError("lr must be > 0, proximal_mu and dp_noise >= 0")
        if self.dp_clip is not None and self.dp_clip <= 0:
            raise ConfigError(f"dp_clip must be > 0 (or null for no DP), got {self.dp_clip}")
        faults = {int(k): v for k, v in self.faults.items()}  # JSON keys are strings
        object.__setattr__(self, "faults", faults)
        bad = {k: v for k, v in faults.items() if v not in FAULTS or not 0 <= k < self.clients}
        if bad:
            raise ConfigError(f"faults must map client ids 0..{self.clients - 1} to one of {FAULTS}, got {bad}")

    def __hash__(self) -> int:  # the dict-valued fields are not hashable; the flat form is
        return hash(self.to_json())

    @property
    def per_round(self) -> int:
        return max(1, int(self.clients * self.fraction))

    def to_dict(self) -> dict:
        """The flat form: the run's fields beside the federated settings."""
        ours = {f.name: getattr(self, f.name) for f in _own_fields()}
        return copy.deepcopy({**{k: getattr(self.run, k) for k in RUN_FIELDS}, **ours})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "FedJob":
        """From the flat form; the old names in RENAMED still work, with a FutureWarning."""
        return config_from_mapping(cls, data, where="federated", keys=(*_flat_keys(), *RENAMED))

    @classmethod
    def from_json(cls, text: str) -> "FedJob":
        return cls.from_dict(json.loads(text))


for _name in RUN_FIELDS:  # job.model, job.seed, ...: read-only views of the run's fields
    setattr(FedJob, _name, property(lambda job, _name=_name: getattr(job.run, _name), doc=f"the run's {_name}"))


def _own_fields() -> list[dataclasses.Field]:
    """The federated settings: every field but the run."""
    return [f for f in dataclasses.fields(FedJob) if f.name != "run"]


def _flat_keys() -> tuple[str, ...]:
    """The keys of the flat form: the run's fields the job sets and the federated settings."""
    return (*RUN_FIELDS, *(f.name for f in _own_fields()))
