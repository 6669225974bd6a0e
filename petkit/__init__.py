"""petkit: parameter-efficient tuning of pre-trained transformers.

    import petkit
    am = petkit.adapt(model, petkit.LoraConfig(r=8, alpha=16, targets=["query", "value"]))
    am(**batch)
    am.save("out/", format="peft")
    am2 = petkit.load(fresh_model, "out/")
"""

from petkit.core.composition import Average, BatchSplit, Parallel, Stack
from petkit.core.config import AdapterConfig
from petkit.core.errors import (
    AdapterFileError,
    BaseModelMismatch,
    ConfigError,
    PetkitError,
    StateError,
    TargetError,
)
from petkit.core.load import load
from petkit.core.model import AdaptedModel, adapt
from petkit.core.registry import all_methods, get_method
import petkit.methods  # noqa: F401  (every built-in method registers itself; core/registry.py relies on it)
from petkit.version import __version__

# Every registered method's config under its class name (petkit.LoraConfig, ...), read from the
# registry: a method's own file is the one place that names its config.
_CONFIGS = {m.config.__name__: m.config for m in all_methods()}
globals().update(_CONFIGS)

__all__ = [
    "__version__", "adapt", "load", "AdaptedModel", "AdapterConfig", "all_methods", "get_method",
    "Stack", "Parallel", "Average", "BatchSplit", *_CONFIGS,
    "PetkitError", "ConfigError", "TargetError", "AdapterFileError", "BaseModelMismatch", "StateError",
]
