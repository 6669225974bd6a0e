"""Running a FedJob: ``serve`` is the ServerApp's work (the rounds and the report) wherever it runs;
``run_federated`` runs it on Flower's simulation engine, one virtual SuperNode per client."""

from __future__ import annotations

import math
import os
import random
import time

from .job import FedJob
from .payload import load_trainable, nbytes, trainable_state


def serve(grid, job: FedJob) -> dict:
    """Run the job's rounds over `grid`; returns per-round records (test metrics of the global adapter,
    accepted, rejected and dropped clients, bytes each way) and the totals, with full-model FedAvg's
    bytes for scale."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    from petkit.train import evaluate

    from .setup import setup
    from .personal import label_shares, personal_accuracy
    from .privacy import epsilon
    from .server import make_strategy
    from .split import Split

    started = time.perf_counter()
    prep, am, parts, _ = setup(job.to_json())  # the server's own copy: initial state and evaluation
    if job.system == "sfprompt":
        Split(am, job.head_layers, job.tail_layers)  # a cut the model cannot take fails here, not in every client
    strategy = make_strategy(job)
    # pFedPG's global state is the server's generator; its models are personal and scored on the clients.
    personal_models = job.system == "pfedpg"
    initial = ({k: v.detach().clone() for k, v in strategy.server.generator.state_dict().items()} if personal_models
               else trainable_state(am))
    shares = [label_shares(prep, part) for part in parts]
    tests: dict = {}

    def evaluate_global(server_round: int, arrays) -> MetricRecord:
        load_trainable(am, dict(arrays.to_torch_state_dict()))
        metrics = evaluate(am, prep.test, prep.task, batch_size=64, per_class=True)
        per_class = metrics.pop("class_accuracy")
        tests[server_round] = {**metrics, "personal": [personal_accuracy(per_class, s) for s in shares]}
        return MetricRecord({k: float(v) for k, v in metrics.items()})

    random.seed(job.seed)  # Flower samples clients with the random module
    config = ConfigRecord({"petkit-job": job.to_json()})
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=job.rounds, train_config=config,
                            evaluate_config=config, evaluate_fn=None if personal_models else evaluate_global)
    rounds = strategy.rounds
    for record in rounds:
        test = tests.get(record["round"])
        record["test"] = test and {k: v for k, v in test.items() if k != "personal"}
        if test:
            record["personal"] = test["personal"]
    full_model = sum(p.numel() * p.element_size() for p in am.parameters())
    report = {
        "job": job.to_json(), "seconds": round(time.perf_counter() - started, 1), "rounds": rounds,
        "initial_test": tests.get(0), "system": job.system, "final_test": rounds[-1]["test"] if rounds else None,
        "initial_state": initial, "final_state": dict(result.arrays.to_torch_state_dict()) if len(result.arrays) else initial,
        "client_examples": [len(p) for p in parts], "adapter_bytes": nbytes(initial), "full_model_bytes": full_model,
        # Flower's messages, and for SFPrompt the activations and gradients across the cut.
        "bytes_total": sum(r["bytes_up"] + r["bytes_down"] + r.get("split_bytes_up", 0) + r.get("split_bytes_down", 0)
                           for r in rounds),
        "client_flops_total": sum(r.get("client_flops", 0) for r in rounds),
        # Full-model FedAvg moves every weight both ways for every sampled client.
        "full_model_bytes_total": sum(2 * full_model * r["sampled"] for r in rounds),
    }
    report["bytes_ratio"] = report["bytes_total"] / report["full_model_bytes_total"] if rounds else math.nan
    if job.dp_clip is not None:
        eps, order = epsilon(job.per_round / job.clients, job.dp_noise, job.rounds, job.dp_delta)
        report["dp"] = {"epsilon": eps, "delta": job.dp_delta, "order": order, "noise_multiplier": job.dp_noise,
                        "clip": job.dp_clip, "sampling_rate": job.per_round / job.clients}
    return report


def run_federated(job: FedJob, *, verbose: bool = False) -> dict:
    """Run the job on Flower's simulation engine; returns ``serve``'s report."""
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    import torch
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from .client import client_app

    out: dict = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        out["report"] = serve(grid, job)

    started = time.perf_counter()
    torch.set_num_threads(1)
    run_simulation(server_app=server, client_app=client_app(), num_supernodes=job.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
                   verbose_logging=verbose)
    if "report" not in out:
        raise RuntimeError("the federated run ended without a report (see Flower's log above)")
    return {**out["report"], "seconds": round(time.perf_counter() - started, 1)}

