"""Builds and loads petkit's C++ extensions on first use, through torch's JIT extension loader, into a
persistent cache: `$PETKIT_EXTENSIONS_DIR`, default `~/.cache/petkit/torch_extensions/<torch version>/<name>`.
A fresh cache costs one compile per extension (~30 s on two cores); later processes load the cached
library in well under a second. Concurrent builders (e.g. pytest-xdist workers) are serialised by
torch's lock file in the build directory: one compiles, the others wait and load its result. A build
killed mid-way can leave that `lock` file behind; delete it.

Each extension (`NativeExtension`) is tried once per process; its failure is a `KernelUnavailable`
naming the pure-PyTorch fallback, kept and raised again on later calls.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from petkit.core.errors import KernelUnavailable


def extensions_root() -> Path:
    root = os.environ.get("PETKIT_EXTENSIONS_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "petkit" / "torch_extensions"
    return base / torch.__version__.replace("+", "_")


def _find_ninja(what: str, fallback: str) -> None:
    """torch runs `ninja` from PATH; the pip `ninja` package puts it next to the interpreter, which is
    not on PATH when the venv is not activated."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        raise KernelUnavailable(f"{what} needs the ninja build tool (pip install ninja); {fallback}") from None
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


class NativeExtension:
    """One C++ extension: `name` (the module and cache directory name), its `sources`, `what` it is
    (for messages) and the `fallback` the messages point to. `extra_cflags` are added to
    -O3 -fopenmp (at::parallel_for is an OpenMP pragma in torch's headers; without it, 1 thread)."""

    def __init__(self, name: str, sources: list[Path], what: str, fallback: str, extra_cflags: tuple = ()):
        self.name, self.sources, self.what, self.fallback = name, [Path(s) for s in sources], what, fallback
        self.extra_cflags = list(extra_cflags)
        self._loaded: dict = {}  # "module" or "error": the outcome of the one build attempt per process

    def cache_dir(self) -> Path:
        return extensions_root() / self.name

    def load(self):
        """The compiled extension module; raises KernelUnavailable. Tried once per process."""
        module = self._loaded.get("module")
        if module is not None:
            return module
        if "error" not in self._loaded:
            try:
                self._loaded["module"] = self._build()
                return self._loaded["module"]
            except KernelUnavailable as e:
                self._loaded["error"] = e
        raise self._loaded["error"]

    def available(self) -> bool:
        try:
            self.load()
        except KernelUnavailable:
            return False
        return True

    def _build(self):
        compiler = os.environ.get("CXX", "c++")
        if not shutil.which(compiler):
            raise KernelUnavailable(f"no C++ compiler ({compiler!r}) found to build {self.what}; {self.fallback}")
        _find_ninja(self.what, self.fallback)
        from torch.utils import cpp_extension

        build_dir = self.cache_dir()
        build_dir.mkdir(parents=True, exist_ok=True)
        try:
            return cpp_extension.load(
                name=self.name, sources=[str(s) for s in self.sources], build_directory=str(build_dir),
                extra_cflags=["-O3", "-fopenmp", *self.extra_cflags], extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as e:  # compiler errors, missing headers, a broken toolchain
            lines = str(e).strip().splitlines() or [repr(e)]
            why = next((line for line in lines if "error" in line.lower()), lines[-1])
            raise KernelUnavailable(f"building {self.what} in {build_dir} failed ({why.strip()}); {self.fallback}") from e
