"""petkit's adapter file format: saving (PEFT's format delegated to `interop.peft`), reading into a
model, and describing a folder without the base model. `petkit.load`, which picks the format of a
folder, is in load.py.

petkit format: one folder, `adapter_config.json` (every adapter's config, the modules it touches,
the base-model fingerprint) and `adapter_model.safetensors` (keys `<adapter>/<module path>.<tensor>`).
"""

from __future__ import annotations

from pathlib import Path

from petkit.core.composition import from_dict
from petkit.core.errors import AdapterFileError, ConfigError
from petkit.core.load_checks import check_base, check_tensors, copy_tensors
from petkit.core.registry import config_from_dict
from petkit.core.storage import CONFIG_NAME, TASK_NAME, WEIGHTS_NAME, read_json, read_tensors, write_files
from petkit.interop.peft import save_peft
from petkit.version import __version__

FORMATS = ("petkit", "peft")


def save_adapters(am, path, format: str = "petkit", names=None) -> None:
    names = am.adapters if names is None else ([names] if isinstance(names, str) else list(names))
    am.state.check_names(names)
    if not names:
        raise ConfigError("there is no adapter to save")
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "peft":
        save_peft(am, Path(path), names)
    else:
        _save_petkit(am, Path(path), names)
    task_file = getattr(am.base, "task_file", None)
    if callable(task_file):  # a base with a task state of its own (a regression head's target scale)
        write_files(Path(path), {TASK_NAME: task_file()})


def read_task_file(path: Path) -> dict | None:
    """A folder's task.json, or None when it has none."""
    return read_json(path / TASK_NAME) if (path / TASK_NAME).is_file() else None


def apply_task_file(base, path: Path):
    """Give the base the task state a folder saved (task.json), or refuse an adapter whose task the base
    cannot take: a task.json (regression) onto a model without a task state, a plain adapter onto one
    that needs it, another head. Returns what puts the base's previous state back (for a failed load)."""
    saved = read_task_file(path)
    loader = getattr(base, "load_task_file", None)
    if saved is None and not callable(loader):
        return lambda: None
    if not callable(loader):
        raise ConfigError(f"{path} holds a {saved.get('task')!r} adapter ({TASK_NAME}); {type(base).__name__} "
                          f"cannot take it: load it onto the model it was trained with (e.g. "
                          f"petkit.models.RegressionModel for regression)")
    previous = base.task_file()
    loader(saved, str(path))  # the base checks the file fits it (and raises if not, e.g. None)
    return lambda: loader(previous, str(path))


def _save_petkit(am, path: Path, names) -> None:
    tensors, adapters = {}, {}
    composition = am.state.composition
    for n in names:
        for key, value in am.adapter_parameters(n).items():
            tensors[f"{n}/{key}"] = value
        adapters[n] = {"config": am.adapter_config(n).to_dict(), "modules": am.state.modules.get(n, [])}
    config = {
        "format": "petkit", "petkit_version": __version__, "base_model_class": type(am.base).__name__,
        "base_fingerprint": am.base_fingerprint, "adapters": adapters,
        "active": [n for n in am.active if n in names],
        "composition": composition.to_dict() if composition is not None and set(composition.leaves()) <= set(names)
        else None,
    }
    write_files(path, {WEIGHTS_NAME: (tensors, {"format": "petkit"}), CONFIG_NAME: config})


def load_petkit(am, path: Path, config: dict, name, force: bool, as_name: str | None = None) -> None:
    """Add the adapters of a petkit-format folder (or the one named) to `am` and fill them from the file."""
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


def restore_petkit(am, path) -> None:
    """Refill the adapters `am` already has from a petkit folder saved from such a model (resuming a
    run): the same adapter names, configs, tensors and base model, else an AdapterFileError and nothing
    copied. Adds, removes and activates nothing."""
    path = Path(path)
    config = read_json(path / CONFIG_NAME)
    adapters = config.get("adapters")
    if config.get("format") != "petkit" or not isinstance(adapters, dict):
        raise AdapterFileError(f"{path} is not a petkit adapter folder (it lists no petkit adapters)")
    if sorted(adapters) != sorted(am.adapters):
        raise AdapterFileError(f"{path} holds adapters {sorted(adapters)}, the model {sorted(am.adapters)}: "
                               "resume into a model built with the same adapters")
    tensors, _ = read_tensors(path / WEIGHTS_NAME)
    pairs = []
    for n, entry in adapters.items():
        where = f"{path} (adapter {n!r})"
        saved_config = config_from_dict(entry.get("config") if isinstance(entry, dict) else None, saved=True)
        if saved_config != am.adapter_config(n):
            raise AdapterFileError(f"{where} was saved with another config ({saved_config}) than the model's "
                                   f"({am.adapter_config(n)})")
        pairs.append((am.adapter_parameters(n), {k[len(n) + 1:]: v for k, v in tensors.items() if k.startswith(n + "/")}))
        check_tensors(*pairs[-1], where)
    check_base(am, config.get("base_fingerprint"), False, path)
    for expected, saved in pairs:
        copy_tensors(expected, saved)
    for n in adapters:
        for delta in am.deltas(n):
            delta.loaded()


def _check_rank(cfg, saved: dict, where: str) -> None:
    """Refuse a rank no tensor in the file has room for, before the adapter allocates it."""
    ranks = [getattr(cfg, "r", 0)] + list(getattr(cfg, "rank_pattern", {}).values())
    room = max((max(t.shape, default=1) for t in saved.values()), default=0)
    if max(ranks) > room:
        raise AdapterFileError(f"{where}: rank {max(ranks)} is larger than any tensor in the file; the config is corrupt")


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


def num_labels_of(adapter) -> int | None:
    """The head size stored with an adapter, so the base is built with a matching head."""
    tensors, _ = read_tensors(Path(adapter) / WEIGHTS_NAME)
    for key, t in tensors.items():
        if key.endswith(("classifier.weight", "classifier.module.weight", "score.weight", "score.module.weight")) and t.dim() == 2:
            return t.shape[0]
    return None
