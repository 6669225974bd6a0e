"""Builds and loads the C++ LUT kernel (csrc/lut.cpp) on first use, through torch's JIT extension
loader, into a persistent cache: `$PETKIT_EXTENSIONS_DIR`, default
`~/.cache/petkit/torch_extensions/<torch version>`. A fresh cache costs one compile (~30 s on two
cores); later processes load the cached library in well under a second. Concurrent builders (e.g.
pytest-xdist workers) are serialised by torch's lock file in the build directory: one compiles, the
others wait and load its result. A build killed mid-way can leave that `lock` file behind; delete it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from petkit.core.errors import KernelUnavailable

SOURCE = Path(__file__).with_name("csrc") / "lut.cpp"
NAME = "petkit_lut"
_FALLBACK = 'backend="reference" runs the same computation in pure PyTorch'


def cache_dir() -> Path:
    root = os.environ.get("PETKIT_EXTENSIONS_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "petkit" / "torch_extensions"
    return base / torch.__version__.replace("+", "_") / NAME


def _find_ninja() -> None:
    """torch runs `ninja` from PATH; the pip `ninja` package puts it next to the interpreter, which is
    not on PATH when the venv is not activated."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        raise KernelUnavailable(f"the LUT kernel needs the ninja build tool (pip install ninja); {_FALLBACK}") from None
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


_loaded: dict = {}  # "module" or "error": the outcome of the one build attempt per process


def load():
    """The compiled extension module; raises KernelUnavailable. Tried once per process."""
    if "module" not in _loaded and "error" not in _loaded:
        try:
            _loaded["module"] = _build()
        except KernelUnavailable as e:
            _loaded["error"] = e
    if "error" in _loaded:
        raise _loaded["error"]
    return _loaded["module"]


def _build():
    compiler = os.environ.get("CXX", "c++")
    if not shutil.which(compiler):
        raise KernelUnavailable(f"no C++ compiler ({compiler!r}) found to build the LUT kernel; {_FALLBACK}")
    _find_ninja()
    from torch.utils import cpp_extension

    build_dir = cache_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(
            name=NAME, sources=[str(SOURCE)], build_directory=str(build_dir),
            # -fopenmp: at::parallel_for is an OpenMP pragma in torch's headers; without it, 1 thread.
            extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # compiler errors, missing headers, a broken toolchain
        lines = str(e).strip().splitlines() or [repr(e)]
        why = next((line for line in lines if "error" in line.lower()), lines[-1])
        raise KernelUnavailable(f"building the LUT kernel in {build_dir} failed ({why.strip()}); {_FALLBACK}") from e


def available() -> bool:
    try:
        load()
    except KernelUnavailable:
        return False
    return True
