"""petkit: parameter-efficient tuning of pre-trained transformers.

    import petkit
    am = petkit.adapt(model, petkit.LoraConfig(r=8, alpha=16, targets=["query", "value"]))
    am(**batch)
    am.save("out/", format="peft")
    am2 = petkit.load(fresh_model, "out/")
"""

from petkit.core.composition import Average, BatchSplit, Parallel, Stack, Sum, WeightedSum
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
# every method's config, spelled out so editors and type checkers see them (tests/test_registry_record.py
# checks the list against the registry)
from petkit.methods.adapters import BottleneckConfig
from petkit.methods.apet import ApetConfig
from petkit.methods.apt import AptConfig
from petkit.methods.bitfit import BitFitConfig
from petkit.methods.deep_prompt import DeepPromptConfig
from petkit.methods.dsee import DseeConfig
from petkit.methods.dvpt import DvptConfig
from petkit.methods.full import FullConfig
from petkit.methods.head import ProbeConfig
from petkit.methods.hst import HstConfig
from petkit.methods.ia3 import IA3Config
from petkit.methods.idpt import IdptConfig
from petkit.methods.layernorm import LayerNormConfig
from petkit.methods.lora import DoraConfig, LoraConfig
from petkit.methods.lowbit import LowbitAdapterConfig, LowbitLoraConfig
from petkit.methods.lst import LstConfig
from petkit.methods.miss import MissConfig
from petkit.methods.mora import MoraConfig
from petkit.methods.prefix import PrefixTuningConfig
from petkit.methods.prompt import PromptTuningConfig
from petkit.methods.sara import SaraConfig
from petkit.methods.sherl import SherlConfig
from petkit.methods.svfit import SVFitConfig
from petkit.methods.telly import TellyConfig
from petkit.methods.vlpet import VLPetConfig
from petkit.quant import load_quantized, quantize, save_quantized
from petkit.version import __version__

__all__ = [
    "__version__", "adapt", "load", "AdaptedModel", "quantize", "save_quantized", "load_quantized", "AdapterConfig", "all_methods", "get_method",
    "Stack", "Sum", "WeightedSum", "BatchSplit", "Parallel", "Average",
    "LoraConfig", "DoraConfig", "IA3Config", "BitFitConfig", "LayerNormConfig", "FullConfig", "ProbeConfig",
    "BottleneckConfig", "VLPetConfig", "SVFitConfig", "MissConfig", "TellyConfig", "DseeConfig", "SaraConfig",
    "ApetConfig", "LowbitLoraConfig", "LowbitAdapterConfig", "MoraConfig", "PromptTuningConfig", "PrefixTuningConfig",
    "DeepPromptConfig", "LstConfig", "SherlConfig", "AptConfig", "DvptConfig", "IdptConfig", "HstConfig",
    "PetkitError", "ConfigError", "TargetError", "AdapterFileError", "BaseModelMismatch", "StateError",
]
