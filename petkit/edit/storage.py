"""An editor on disk: editor.safetensors (its weights, running statistics and edit rates) and
editor_config.json (MendConfig, the edited layers' shapes, the model it was trained for)."""

from __future__ import annotations

from pathlib import Path

from petkit.core.errors import AdapterFileError
from petkit.core.storage import read_json, read_tensors, write_files
from petkit.edit.editor import MendConfig, MendEditor
from petkit.edit.targets import linear_modules, weight_shapes

WEIGHTS = "editor.safetensors"
CONFIG = "editor_config.json"


def save_editor(folder, editor: MendEditor, extra: dict | None = None) -> Path:
    folder = Path(folder)
    record = {"mend": editor.config.to_dict(), "shapes": {k: list(v) for k, v in editor.shapes.items()},
              **(extra or {})}
    write_files(folder, {CONFIG: record, WEIGHTS: (dict(editor.state_dict()), {"format": "pt"})})
    return folder


def load_editor(folder, model=None) -> tuple[MendEditor, dict]:
    """The saved editor and its config record; with `model`, checks that every edited layer is there
    with the shape the editor was trained for."""
    folder = Path(folder)
    record = read_json(folder / CONFIG)
    try:
        config = MendConfig(**record["mend"])
        shapes = {k: tuple(v) for k, v in record["shapes"].items()}
    except (KeyError, TypeError) as exc:
        raise AdapterFileError(f"{folder / CONFIG} is not a MEND editor config ({exc})") from None
    if model is not None:
        found = weight_shapes(linear_modules(model, config.targets))
        wrong = [f"{k}: editor {shapes[k]}, model {found[k]}" for k in config.targets if found[k] != shapes[k]]
        if wrong:
            raise AdapterFileError(f"the editor in {folder} was trained for other layer shapes ({'; '.join(wrong)})")
    editor = MendEditor(config, shapes)
    tensors, _ = read_tensors(folder / WEIGHTS)
    missing = set(editor.state_dict()) - set(tensors)
    if missing:
        raise AdapterFileError(f"{folder / WEIGHTS} lacks {len(missing)} editor tensors (e.g. {sorted(missing)[0]})")
    editor.load_state_dict(tensors, strict=False)
    return editor.eval(), record
