"""A real Flower deployment over loopback: SuperLink, two SuperNodes and ``flwr run`` as separate
processes, one round of a tiny job; every process they start is gone afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from petkit.cli.main import main
from petkit.fed.job import FedJob

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flower-superlink & co. sit beside this venv's python


def test_write_app_gives_an_app_flower_accepts_and_the_commands(tmp_path, capsys):
    pytest.importorskip("flwr")
    from flwr.cli.config_utils import load_and_validate

    app, out = tmp_path / "app", tmp_path / "out"
    assert main(["fed", "-s", "clients=2", "-s", "rounds=3", "--output", str(out), "--write-app", str(app)]) == 0
    config, warnings = load_and_validate(app / "pyproject.toml")  # imports both components, as flwr run does
    assert warnings == []
    settings = config["tool"]["flwr"]["app"]["config"]
    assert FedJob.from_dict(json.loads(settings["petkit-job"])) == FedJob(clients=2, rounds=3)
    assert settings["petkit-output"] == str(out.resolve())
    printed = capsys.readouterr().out
    assert printed.count("flower-supernode --insecure") == 2 and "partition-id=1 num-partitions=2" in printed
    assert "flower-superlink --insecure" in printed and f"flwr run {app} petkit" in printed
    assert not out.exists()  # nothing ran


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Starts commands in their own sessions with logs under `folder`; on exit stops them and every
    descendant (Flower's SuperExec, ServerApp and ClientApp processes, some in sessions of their own)."""

    def __init__(self, folder: Path, env: dict):
        self.folder, self.env, self.started = folder, env, {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")
        self.started[name] = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=log, stderr=subprocess.STDOUT,
                                              env=self.env, cwd=self.folder, start_new_session=True)
        log.close()
        return self.started[name]

    def logs(self) -> str:
        tails = []
        for name in self.started:
            lines = (self.folder / f"{name}.log").read_text(errors="replace").splitlines()
            tails.append(f"--- {name} (last 25 lines)\n" + "\n".join(lines[-25:]))
        return "\n".join(tails)

    def check_alive(self, *names: str) -> None:
        dead = {n: self.started[n].poll() for n in names if self.started[n].poll() is not None}
        assert not dead, f"exited early (return codes {dead}):\n{self.logs()}"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        import psutil

        # Collect the tree first: once a parent dies its children are re-parented and untraceable.
        tree = []
        for proc in self.started.values():
            try:
                root = psutil.Process(proc.pid)
                tree += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in tree:
                try:
                    group = os.getpgid(p.pid)
                    if group != os.getpgrp():  # never pytest's own group
                        os.killpg(group, sig)  # each group: the SuperLink's SuperExec has its own
                except (ProcessLookupError, PermissionError):
                    pass
            _, tree = psutil.wait_procs(tree, timeout=15)
            for proc in self.started.values():
                proc.poll()  # reap our direct children
        for proc in self.started.values():
            proc.wait(timeout=5)

    def leftovers(self, marks: list[str]) -> list[str]:
        """Live processes whose command line mentions one of `marks` (our ports and folder)."""
        import psutil

        found = []
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            line = " ".join(p.info["cmdline"] or [])
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.pid != os.getpid() and any(m in line for m in marks):
                found.append(f"{p.pid}: {line}")
        return found


def wait_for(condition, timeout: float, what: str, procs: Processes, *alive: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        procs.check_alive(*alive)
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}:\n{procs.logs()}"
        time.sleep(0.5)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.real
@pytest.mark.serial
def test_one_round_on_a_superlink_and_two_supernodes_over_loopback(tmp_path):
    """The global adapter the deployment saves is the example-weighted mean of what clients 0 and 1
    train from the initial adapter, recomputed here outside Flower."""
    pytest.importorskip("flwr")
    pytest.importorskip("psutil")
    from safetensors.torch import load_file

    from petkit.core.storage import WEIGHTS_NAME
    from petkit.fed.aggregate import fedavg
    from petkit.fed.deploy import write_app
    from petkit.fed.fedpeft import local_update
    from petkit.fed.payload import load_trainable
    from petkit.fed.setup import setup

    job = FedJob(model="minilm", data="bbc", clients=2, rounds=1, local_steps=2, batch_size=4, max_train=40,
                 max_eval=16, split="iid")
    home, out = tmp_path / "flwr-home", tmp_path / "out"
    link, node_ports = free_port(), [free_port(), free_port()]
    home.mkdir()
    # flwr run finds the SuperLink by a connection name in $FLWR_HOME/config.toml (1.42 has no address flag).
    (home / "config.toml").write_text(f'[superlink]\ndefault = "petkit"\n\n[superlink.petkit]\n'
                                      f'address = "127.0.0.1:{link}"\ninsecure = true\n')
    app = write_app(tmp_path / "app", job, out)
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           # Flower spawns flower-superexec, flwr-serverapp and flwr-clientapp by name; they import this petkit.
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    nodes = [f"supernode{i}" for i in range(job.clients)]
    started = time.monotonic()
    with Processes(tmp_path, env) as procs:
        # No runtime `uv sync`: the apps run in this environment.
        procs.start("superlink", "flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                    "--port", str(link))
        for i, name in enumerate(nodes):
            procs.start(name, "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                        "--port", str(node_ports[i]), "--node-config", f"partition-id={i} num-partitions={job.clients}")
        wait_for(lambda: port_open(link), 90, "the SuperLink's port", procs, "superlink")
        # The strategy waits until both SuperNodes are connected; --stream returns when the run ends.
        run = procs.start("flwr-run", "flwr", "run", str(app), "petkit", "--stream")
        wait_for(lambda: run.poll() is not None, 300, "`flwr run` to finish", procs, "superlink", *nodes)
        assert run.returncode == 0, procs.logs()
        assert (out / "report.json").exists(), f"the ServerApp wrote no report:\n{procs.logs()}"
        seconds = time.monotonic() - started
    marks = [str(tmp_path), *(f"127.0.0.1:{p}" for p in [link, *node_ports]), *(f"--port {p}" for p in node_ports)]
    assert not procs.leftovers(marks), "processes left behind:\n" + "\n".join(procs.leftovers(marks))
    print(f"deployment: {seconds:.0f} s from the SuperLink's start to the report")

    report = json.loads((out / "report.json").read_text())
    assert json.loads(report["job"]) == json.loads(job.to_json())
    (record,) = report["rounds"]
    assert (record["round"], record["sampled"], record["accepted"]) == (1, 2, 2), record
    assert record["rejected"] == [] and record["dropped"] == [] and record["test"] is not None

    _, am, parts, initial = setup(job.to_json())
    load_trainable(am, initial)  # the cached model may hold another run's state
    adapter = {f"{n}/{k}": v.detach().clone() for n in am.adapters for k, v in am.adapter_parameters(n).items()}
    mine = [local_update(job, c, 1, initial)[0] for c in range(job.clients)]
    load_trainable(am, fedavg([(state, len(part)) for state, part in zip(mine, parts)]))
    expected = {f"{n}/{k}": v for n in am.adapters for k, v in am.adapter_parameters(n).items()}
    saved = load_file(out / "adapter" / WEIGHTS_NAME)
    assert saved.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(saved[name], value, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(saved[k], adapter[k]) for k in saved), "the global adapter did not change"
