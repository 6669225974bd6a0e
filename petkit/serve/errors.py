"""Which HTTP status an error from below becomes, and the error response itself."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from petkit.core.errors import PetkitError
from petkit.serve.adapters import Forbidden, UnknownAdapter
from petkit.serve.engine import QueueFull, ShuttingDown
from petkit.serve.protocol import error_body


def status_of(exc: BaseException) -> int:
    if isinstance(exc, UnknownAdapter):
        return 404
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, QueueFull):
        return 429
    if isinstance(exc, ShuttingDown):
        return 503
    if isinstance(exc, (PetkitError, ValueError)):
        return 400
    return 500


def error_response(exc: BaseException) -> JSONResponse:
    status = status_of(exc)
    message = str(exc) if status != 500 else f"internal error: {type(exc).__name__}: {exc}"
    headers = {"Retry-After": str(getattr(exc, "retry_after", 1))} if status in (429, 503) else None
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)
