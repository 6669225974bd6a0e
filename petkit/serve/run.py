"""Running the server: `serve` in the foreground (the CLI), `BackgroundServer` in a thread (tests,
benchmarks, notebooks)."""

from __future__ import annotations

import socket
import threading
import time

from petkit.serve.app import create_app
from petkit.serve.config import ServeConfig
from petkit.serve.service import Service, load_service


def _uvicorn_server(service: Service, host: str, port: int, log_level: str):
    import uvicorn

    app = create_app(service)
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                         timeout_graceful_shutdown=10))


def serve(config: ServeConfig, log_level: str = "info") -> None:
    """Load the model and adapters, then serve until interrupted (Ctrl-C / SIGTERM stop it cleanly)."""
    service = load_service(config)
    _uvicorn_server(service, config.host, config.port, log_level).run()


class BackgroundServer:
    """A server for an already built Service on 127.0.0.1 and a free port, in a thread:

        with BackgroundServer(service) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="...")
    """

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.service = service
        self.host, self.port = host, port or _free_port(host)
        self.server = _uvicorn_server(service, self.host, self.port, log_level)
        self.thread = threading.Thread(target=self.server.run, name="petkit-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.server.should_exit = True
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
