"""petkit: parameter-efficient tuning of pre-trained transformers.

    import petkit
    am = petkit.adapt(model, petkit.LoraConfig(r=8, alpha=16, targets=["query", "value"]))
    am(**batch)
    am.save("out/", format="peft")
    am2 = petkit.load(fresh_model, "out/")
"""

__version__ = "0.1.0"

from petkit.core.composition import Average, BatchSplit, Parallel, Stack  # noqa: E402
from petkit.core.config import AdapterConfig  # noqa: E402
from petkit.core.errors import (  # noqa: E402
    AdapterFileError,
    BaseModelMismatch,
    ConfigError,
    PetkitError,
    StateError,
    TargetError,
)
from petkit.core.files import load  # noqa: E402
from petkit.core.model import AdaptedModel, adapt  # noqa: E402
from petkit.core.registry import all_methods, get_method  # noqa: E402
from petkit.methods.adapters import BottleneckConfig  # noqa: E402
from petkit.methods.apet import ApetConfig  # noqa: E402
from petkit.methods.apt import AptConfig  # noqa: E402
from petkit.methods.bitfit import BitFitConfig  # noqa: E402
from petkit.methods.deep_prompt import DeepPromptConfig  # noqa: E402
from petkit.methods.dvpt import DvptConfig  # noqa: E402
from petkit.methods.dsee import DseeConfig  # noqa: E402
from petkit.methods.full import FullConfig  # noqa: E402
from petkit.methods.head import ProbeConfig  # noqa: E402
from petkit.methods.hst import HstConfig  # noqa: E402
from petkit.methods.ia3 import IA3Config  # noqa: E402
from petkit.methods.idpt import IdptConfig  # noqa: E402
from petkit.methods.layernorm import LayerNormConfig  # noqa: E402
from petkit.methods.lora import DoraConfig, LoraConfig  # noqa: E402
from petkit.methods.lst import LstConfig  # noqa: E402
from petkit.methods.lowbit import LowbitAdapterConfig, LowbitLoraConfig  # noqa: E402
from petkit.methods.miss import MissConfig  # noqa: E402
from petkit.methods.mora import MoraConfig  # noqa: E402
from petkit.methods.prefix import PrefixTuningConfig  # noqa: E402
from petkit.methods.prompt import PromptTuningConfig  # noqa: E402
from petkit.methods.sara import SaraConfig  # noqa: E402
from petkit.methods.sherl import SherlConfig  # noqa: E402
from petkit.methods.svfit import SVFitConfig  # noqa: E402
from petkit.methods.telly import TellyConfig  # noqa: E402
from petkit.methods.vlpet import VLPetConfig  # noqa: E402

__all__ = [
    "adapt", "load", "AdaptedModel", "AdapterConfig", "all_methods", "get_method",
    "Stack", "Parallel", "Average", "BatchSplit",
    "LoraConfig", "DoraConfig", "IA3Config", "BitFitConfig", "LayerNormConfig", "FullConfig", "ProbeConfig",
    "BottleneckConfig", "VLPetConfig", "SVFitConfig", "MissConfig", "TellyConfig", "DseeConfig", "SaraConfig",
    "ApetConfig", "LowbitLoraConfig", "LowbitAdapterConfig", "MoraConfig", "PromptTuningConfig", "PrefixTuningConfig",
    "DeepPromptConfig", "LstConfig", "SherlConfig", "AptConfig", "DvptConfig", "IdptConfig", "HstConfig",
    "PetkitError", "ConfigError", "TargetError", "AdapterFileError", "BaseModelMismatch", "StateError",
]
