"""The serve extra's packages, checked before anything imports them, so a missing one is one clear line."""

import importlib.util

from petkit.core.errors import MissingExtra

NEEDED = ("fastapi", "uvicorn", "prometheus_client")


def require_serve_extra() -> None:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"petkit serve needs {', '.join(missing)}, which are not installed: "
                           "pip install 'petkit[serve]'")
