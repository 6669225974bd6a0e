"""Each bench run in a fresh Python process: `python -m petkit.bench.child` reads a job (JSON) on
stdin and prints its measurements as one marked JSON line on stdout.

A fresh process per run is what makes the peak-memory column honest (see memory.py), and it keeps
one crashing method from taking the whole bench down with it. It costs a second or two of imports
per run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MARK = "PETKIT_BENCH_RESULT "


class RunFailed(RuntimeError):
    """The child process ended without a result; the message is its last error line."""


def run_isolated(job: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # the child imports the same petkit as this process, installed or not
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds petkit/
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-m", "petkit.bench.child"], input=json.dumps(job),
                          capture_output=True, text=True, env=env, check=False)  # a failure is read below
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    raise RunFailed(errors[-1] if errors else f"the run's process exited with code {proc.returncode} and no message")


def main() -> None:
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()

    from petkit.bench.measure import measure_run
    result = measure_run(json.loads(sys.stdin.read()))
    print(MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
