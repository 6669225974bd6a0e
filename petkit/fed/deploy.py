"""A real Flower deployment of a FedJob: one SuperLink, one SuperNode per client, and ``flwr run`` on
the app directory ``write_app`` writes. ``server_app`` and ``client_app`` are what that app names:
the ServerApp runs ``serve`` and saves the global adapter and the report where the app says."""

from __future__ import annotations

from pathlib import Path

import tomli_w  # a dependency of flwr's own CLI
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .client import client_app as _client_app
from .job import FedJob

server_app = ServerApp()
client_app = _client_app()


@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    from .report import save
    from .run import serve

    job = FedJob.from_json(context.run_config["petkit-job"])
    save(serve(grid, job), job, Path(context.run_config["petkit-output"]))


def write_app(directory, job: FedJob, output) -> Path:
    """Write the Flower app directory (a pyproject.toml) that runs `job` and saves its adapter and
    report under `output` on the SuperLink's machine; returns the directory."""
    app = {
        # The apps import petkit from the environment they run in, so no dependencies: Flower's
        # runtime `uv sync` would fetch torch from PyPI if it were listed.
        "project": {"name": "petkit-fed", "version": "1.0.0", "license": "Apache-2.0", "dependencies": [],
                    "description": "petkit federated adapter tuning (a FedJob) on a Flower deployment"},
        "tool": {"flwr": {"app": {
            "publisher": "petkit",
            "components": {"serverapp": "petkit.fed.deploy:server_app", "clientapp": "petkit.fed.deploy:client_app"},
            "config": {"petkit-job": job.to_json(), "petkit-output": str(Path(output).resolve())},
        }}},
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(tomli_w.dumps(app), encoding="utf-8")
    return directory


def recipe(directory, job: FedJob, superlink: str = "127.0.0.1:8000") -> str:
    """The commands that run the app in `directory`: a SuperLink, a SuperNode per client, ``flwr run``."""
    host, port = superlink.rsplit(":", 1)
    nodes = "\n".join(f'flower-supernode --insecure --superlink {superlink} --port {9094 + i} '
                      f'--node-config "partition-id={i} num-partitions={job.clients}"' for i in range(job.clients))
    return f"""\
# --insecure is for loopback and tests only. Across machines use TLS (flower-superlink --ssl-certfile
# --ssl-keyfile --ssl-ca-certfile, flower-supernode --root-certificates; see Flower's docs) and start
# the SuperLink with --host 0.0.0.0. Every machine needs petkit[fed] and the job's data.
# Each command keeps running (its own terminal or machine); Ctrl+C stops it after the run.
# 1. The SuperLink; the ServerApp runs in its Python environment, nothing is installed at run time:
flower-superlink --insecure --disable-runtime-dependency-installation --host {host} --port {port}
# 2. One SuperNode per client (--port: its own app API, distinct on one machine):
{nodes}
# 3. Submit the run, with this connection in $FLWR_HOME/config.toml (default ~/.flwr/config.toml):
#      [superlink.petkit]
#      address = "{superlink}"
#      insecure = true
flwr run {directory} petkit --stream
"""
