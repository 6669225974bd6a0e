"""Saving and loading adapters: the petkit format, with PEFT's format delegated to `interop.peft`.

petkit format: one folder, `adapter_config.json` (every adapter's config, the modules it touches,
the base-model fingerprint) and `adapter_model.safetensors` (keys `<adapter>/<module path>.<tensor>`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from petkit import __version__
from petkit.core.composition import from_dict
from petkit.core.errors import (
    AdapterFileError,
    BaseModelMismatch,
    ConfigError,
    PetkitError,
)
from petkit.core.fingerprint import mismatch
from petkit.core.model import AdaptedModel
from petkit.core.registry import config_from_dict
from petkit.core.storage import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    read_json,
    read_tensors,
    write_files,
)

FORMATS = ("petkit", "peft")


def save_adapters(am: AdaptedModel, path, format: str = "petkit", names=None) -> None:
    names = am.adapters if names is None else ([names] if isinstance(names, str) else list(names))
    am._check_names(names)
    if not names:
        raise ConfigError("there is no adapter to save")
    if format == "peft":
        from petkit.interop.peft import save_peft
        return save_peft(am, Path(path), names)
    if format != "petkit":
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    tensors, adapters = {}, {}
    composition = am.state.composition
    for n in names:
        for key, value in am.adapter_parameters(n).items():
            tensors[f"{n}/{key}"] = value
        adapters[n] = {"config": am.config(n).to_dict(), "modules": am._modules_of.get(n, [])}
    config = {
        "format": "petkit", "petkit_version": __version__, "base_model_class": type(am.base).__name__,
        "base_fingerprint": am.base_fingerprint, "adapters": adapters,
        "active": [n for n in am.active if n in names],
        "composition": composition.to_dict() if composition is not None and set(composition.leaves()) <= set(names)
        else None,
    }
    write_files(Path(path), {WEIGHTS_NAME: (tensors, {"format": "petkit"}), CONFIG_NAME: config})


def load(model: nn.Module, path, name: str | None = None, *, as_name: str | None = None, force: bool = False,
         trainable: bool = False) -> AdaptedModel:
    """Load adapters saved by petkit or Hugging Face PEFT onto `model` (wrapped in place).

    name: load only that adapter from a multi-adapter petkit file (PEFT: the name to give it).
    as_name: the name the one loaded adapter gets (to load several files saved as "default" side by side).
    force: load even if the file was saved for a different base model.
    On any error the model is left exactly as it was.
    """
    path = Path(path)
    if not path.is_dir():
        raise AdapterFileError(f"adapter folder {path} does not exist")
    config = read_json(path / CONFIG_NAME)
    created = not isinstance(model, AdaptedModel)
    am = AdaptedModel(model) if created else model
    before = set(am.adapters)
    grads = [(p, p.requires_grad) for p in am.parameters()]  # adding an adapter freezes the base
    try:
        if config.get("format") == "petkit":
            _load_petkit(am, path, config, name, force, as_name)
        elif "peft_type" in config:
            from petkit.interop.peft import load_peft
            load_peft(am, path, config, as_name or name or "default", force)
        else:
            raise AdapterFileError(f"{path / CONFIG_NAME} is neither a petkit nor a PEFT adapter config")
    except Exception as exc:
        for n in set(am.adapters) - before:
            am.delete(n)  # new adapters are never merged, so this restores the model exactly
        for p, flag in grads:
            p.requires_grad_(flag)
        if isinstance(exc, PetkitError):
            raise
        raise AdapterFileError(f"could not load {path}: {exc}") from exc
    for n in set(am.adapters) - before:
        am.set_trainable(n, trainable)
    return am


def check_base(am: AdaptedModel, saved, force: bool, where) -> None:
    why = mismatch(saved, am.base_fingerprint)
    if why and not force:
        raise BaseModelMismatch(f"{where} does not fit this model: {why}; pass force=True to load it anyway")


def _load_petkit(am: AdaptedModel, path: Path, config: dict, name, force: bool, as_name: str | None = None) -> None:
    adapters = config.get("adapters")
    if not isinstance(adapters, dict) or not adapters:
        raise AdapterFileError(f"{path / CONFIG_NAME} lists no adapters")
    if name is not None and name not in adapters:
        names = ", ".join(map(repr, list(adapters)[:5])) + (", ..." if len(adapters) > 5 else "")
        raise AdapterFileError(f"{path} has no adapter {name!r}; it has {names}")
    tensors, _ = read_tensors(path / WEIGHTS_NAME)
    wanted = [name] if name else list(adapters)
    if as_name is not None and len(wanted) != 1:
        raise ConfigError(f"as_name renames one adapter; {path} holds {len(wanted)}: choose one with name=...")
    rename = {n: as_name or n for n in wanted}
    pairs = []
    for n in wanted:
        entry = adapters[n]
        if not isinstance(entry, dict):
            raise AdapterFileError(f"{path / CONFIG_NAME}: adapter {n!r} must be a JSON object")
        cfg = config_from_dict(entry.get("config"), saved=True)
        if rename[n] in am.adapters:
            raise ConfigError(f"the model already has an adapter named {rename[n]!r}; load it with as_name=... or "
                              "delete the other first")
        saved = {k[len(n) + 1:]: v for k, v in tensors.items() if k.startswith(n + "/")}
        _check_rank(cfg, saved, f"{path} (adapter {n!r})")
        am.add(cfg, rename[n], init=False)
        pairs.append((am.adapter_parameters(rename[n]), saved, f"{path} (adapter {n!r})"))
    # Every check before any copy: full fine-tuning copies into the base itself, which delete() cannot undo.
    for expected, saved, where in pairs:
        check_tensors(expected, saved, where)
    check_base(am, config.get("base_fingerprint"), force, path)  # after the shapes: a wrong shape says more
    for expected, saved, _ in pairs:
        copy_tensors(expected, saved)
    for n in wanted:
        for delta in am.deltas(rename[n]):
            delta.loaded()
    active = config.get("active")
    active = [rename[n] for n in active if isinstance(n, str) and n in wanted] if isinstance(active, list) else []
    saved = config.get("composition")
    if saved is not None and as_name is None:
        composition = from_dict(saved)
        if set(composition.leaves()) <= set(wanted):
            am.set_active(composition)
            return
    if active:
        am.set_active(active)


def _check_rank(cfg, saved: dict, where: str) -> None:
    """Refuse a rank no tensor in the file has room for, before the adapter allocates it."""
    ranks = [getattr(cfg, "r", 0)] + list(getattr(cfg, "rank_pattern", {}).values())
    room = max((max(t.shape, default=1) for t in saved.values()), default=0)
    if max(ranks) > room:
        raise AdapterFileError(f"{where}: rank {max(ranks)} is larger than any tensor in the file; the config is corrupt")


def check_tensors(expected: dict, saved: dict, where: str) -> None:
    """Check that saved tensors match the adapter's tensors in names, shapes and kind."""
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} tensors for modules this model lacks (e.g. {extra[0]!r})")
        raise AdapterFileError(f"{where} does not match the model: {'; '.join(parts)}")
    for key, target in expected.items():
        if tuple(saved[key].shape) != tuple(target.shape):
            raise AdapterFileError(f"{where}: shape mismatch for {key!r}: file has {tuple(saved[key].shape)}, "
                                   f"model expects {tuple(target.shape)}")
        if not saved[key].is_floating_point() and target.is_floating_point():
            raise AdapterFileError(f"{where}: {key!r} has dtype {saved[key].dtype}, expected a float tensor")


def copy_tensors(expected: dict, saved: dict) -> None:
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(saved[key].to(target.dtype))


def describe(path) -> dict:
    """What an adapter folder holds (for `petkit inspect`), without needing the base model."""
    path = Path(path)
    config = read_json(path / CONFIG_NAME)
    tensors, metadata = read_tensors(path / WEIGHTS_NAME)
    size = (path / WEIGHTS_NAME).stat().st_size
    info = {"path": str(path), "format": "petkit" if config.get("format") == "petkit" else "peft",
            "bytes": size, "tensors": len(tensors), "parameters": sum(t.numel() for t in tensors.values())}
    if info["format"] == "petkit":
        adapters = config.get("adapters")
        if not isinstance(adapters, dict):
            raise AdapterFileError(f"{path / CONFIG_NAME} lists no adapters")
        info["adapters"] = {}
        for n, e in adapters.items():
            e = e if isinstance(e, dict) else {}  # describe what is there; load() is the strict one
            cfg, modules = e.get("config"), e.get("modules")
            info["adapters"][n] = {"method": cfg.get("method") if isinstance(cfg, dict) else None,
                                   "modules": len(modules) if isinstance(modules, list) else 0,
                                   "parameters": sum(t.numel() for k, t in tensors.items() if k.startswith(n + "/"))}
        info["base_model_class"] = config.get("base_model_class")
    else:
        info["peft_type"] = config.get("peft_type")
        info["r"] = config.get("r")
        info["target_modules"] = config.get("target_modules")
        info["petkit_fingerprint"] = "petkit_base" in metadata
    info["config"] = config  # a fresh object from read_json: plain JSON values
    return info
