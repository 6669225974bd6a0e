"""What every request passes before a route sees it: the API key, the body size cap, and the metrics
of its outcome (status and time to its last byte). A plain ASGI middleware, so it also covers
streamed responses and FastAPI's own 404s.
"""

from __future__ import annotations

import hmac
import json
import time

from petkit.serve.metrics import Metrics
from petkit.serve.protocol import error_body

OPEN_PATHS = ("/health",)  # reachable without the API key (load balancers probe it)


class Gate:
    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, metrics: Metrics, routes: set[str]):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes
        self.metrics, self.routes = metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, path = time.perf_counter(), scope["path"]
        route = path if path in self.routes else "other"
        status = 500

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.metrics.requests.labels(route, str(status)).inc()
                self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            await send(message)

        if self.api_key is not None and path not in OPEN_PATHS and not self._authorised(scope):
            return await _error(observed_send, 401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                                {"www-authenticate": "Bearer"})
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _error(observed_send, 413, f"request body of {declared} bytes exceeds the limit of "
                                                    f"{self.max_body_bytes} bytes")
        body, more = b"", True
        while more:  # read the body here so an undeclared (chunked) oversize body is refused too
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await _error(observed_send, 413, f"request body exceeds the limit of {self.max_body_bytes} bytes")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, for streamed responses

        await self.app(scope, replay, observed_send)

    def _authorised(self, scope) -> bool:
        given = _header(scope, b"authorization") or ""
        scheme, _, token = given.partition(" ")
        # compare_digest: the time taken does not reveal how many leading characters were right
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _error(send, status: int, message: str, headers: dict | None = None) -> None:
    payload = json.dumps(error_body(status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
