"""The C++ LUT kernel (csrc/lut.cpp), built on first use into the persistent extension cache by
`petkit.kernels.native` (`~/.cache/petkit/torch_extensions/<torch version>/petkit_lut` unless
`$PETKIT_EXTENSIONS_DIR` says otherwise; a fresh cache costs one ~30 s compile on two cores).
"""

from __future__ import annotations

from pathlib import Path

from petkit.kernels.native import NativeExtension

SOURCE = Path(__file__).with_name("csrc") / "lut.cpp"
NAME = "petkit_lut"
_FALLBACK = 'backend="reference" runs the same computation in pure PyTorch'

EXTENSION = NativeExtension(NAME, [SOURCE], "the LUT kernel", _FALLBACK)
cache_dir = EXTENSION.cache_dir


def load():
    """The compiled extension module; raises KernelUnavailable. Tried once per process."""
    return EXTENSION.load()


def available() -> bool:
    return EXTENSION.available()
