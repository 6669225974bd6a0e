"""`results.jsonl`: the bench's only state. Re-running skips what it holds; it never mixes setups.

Line 1 is a header with the setup and its hash; every further line is one finished run (successful
or failed) carrying the same hash. A run is appended and flushed as soon as it ends, so an
interrupted bench loses at most the run in progress, and the same command resumes it. A torn last
line (the process killed mid-write) is dropped when the file is next opened.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from petkit.bench.config import BenchConfig
from petkit.core.errors import ConfigError
from petkit.version import __version__

RESULTS_NAME = "results.jsonl"
KEY = ("library", "method", "task", "seed", "lr")
START_FRESH = "start fresh with --fresh (deletes those results) or choose another --output"


def key_of(record: dict) -> tuple:
    return tuple(record[k] for k in KEY)


class Results:
    def __init__(self, path: str | Path, config: BenchConfig, fresh: bool = False, lock: bool = True):
        self.path = Path(path)
        self.hash = config.setup_hash()
        self.records: list[dict] = []
        if lock:
            self._lock()
        try:
            if fresh:
                self.path.unlink(missing_ok=True)
            if self.path.exists():
                self._load(config)
            else:
                header = {"kind": "header", "config_hash": self.hash, "setup": config.setup(),
                          "petkit_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(json.dumps(header) + "\n", encoding="utf-8")
        except BaseException:
            self.close()  # a refused file must not stay locked
            raise

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock (so the same process can open the file again, e.g. after an interruption)."""
        if getattr(self, "_lock_file", None):
            self._lock_file.close()
            self._lock_file = None

    def done(self, key: tuple) -> dict | None:
        """The successful run with this key, if any (failed runs are tried again)."""
        for r in self.records:
            if r["status"] == "ok" and key_of(r) == key:
                return r
        return None

    def append(self, record: dict) -> None:
        record = {**record, "config_hash": self.hash}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)

    def _lock(self) -> None:
        """Two benches appending to one file would run the same grid twice and interleave it: the
        second one is refused. The lock lasts until close() (or the process ends)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise ConfigError(f"another bench is writing {self.path}; wait for it to finish or choose another "
                              "--output") from None

    # -- reading an existing file -----------------------------------------------------------------
    def _load(self, config: BenchConfig) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("kind") != "header":
            raise ConfigError(f"{self.path} is not a petkit bench results file; {START_FRESH}")
        if header.get("config_hash") != self.hash:
            changed = _diff(header.get("setup", {}), config.setup())
            raise ConfigError(f"{self.path} holds results of another configuration ({changed}); "
                              f"refusing to mix them: {START_FRESH}")
        for n, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):  # torn by an interruption mid-write: that run is simply redone
                    self.path.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
                    break
                raise ConfigError(f"{self.path}, line {n}, is not valid JSON; {START_FRESH}") from None
            if record.get("config_hash") != self.hash:
                raise ConfigError(f"{self.path}, line {n}, is a run of another configuration; {START_FRESH}")
            self.records.append(record)
        self._check_settings(config)

    def _check_settings(self, config: BenchConfig) -> None:
        """Runs of a method with other settings (say LoRA r=16 instead of 8) must not be mixed either."""
        for method in config.methods:
            ours = config.method_settings(method)
            for r in self.records:
                if r["method"] == method and r["settings"] != ours:
                    raise ConfigError(f"{self.path} holds {method} runs with settings {r['settings']}, but this bench "
                                      f"uses {ours}; refusing to mix them: {START_FRESH}")


def _diff(old: dict, new: dict) -> str:
    changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(changed) or "same settings, other hash"
