"""A TTM on disk: `ttm_config.json` ({"format": "petkit-ttm", "version": 1, "config": {...}, "meta": {...}})
and `model.safetensors`. No pickle anywhere."""

from __future__ import annotations

from pathlib import Path

from petkit.core.errors import AdapterFileError
from petkit.core.storage import read_tensors, write_files
from petkit.models.rebuild import read_description

from .config import TTMConfig
from .model import TinyTimeMixer

DESCRIPTION, WEIGHTS = "ttm_config.json", "model.safetensors"
FORMAT, VERSION = "petkit-ttm", 1


def save_ttm(model: TinyTimeMixer, folder, meta: dict | None = None) -> None:
    spec = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(), "meta": meta or {}}
    write_files(Path(folder), {DESCRIPTION: spec, WEIGHTS: (model.state_dict(), {"format": "pt"})})


def load_ttm(folder) -> tuple[TinyTimeMixer, dict]:
    """(model in eval mode, the meta dict saved with it)."""
    folder = Path(folder)
    spec = read_description(folder / DESCRIPTION, FORMAT, VERSION, "TTM model")
    model = TinyTimeMixer(TTMConfig.from_dict(spec.get("config", {})))
    tensors, _ = read_tensors(folder / WEIGHTS)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise AdapterFileError(f"{folder / WEIGHTS} does not fit its config: {str(exc).splitlines()[0]}") from None
    return model.eval(), spec.get("meta", {})
