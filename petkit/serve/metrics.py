"""What `GET /metrics` exposes, in Prometheus' text format (through the maintained prometheus_client).

Each server has its own registry, so several servers in one process (tests) do not share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("petkit_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("petkit_prompt_tokens", "prompt tokens processed", registry=r)
        self.completion_tokens = Counter("petkit_completion_tokens", "tokens generated", registry=r)
        self.rejected = Counter("petkit_rejected", "requests refused because the queue was full", registry=r)
        self.queue_depth = Gauge("petkit_queue_depth", "requests waiting to join the running batch", registry=r)
        self.running = Gauge("petkit_running_sequences", "sequences in the running batch", registry=r)
        self.adapters_resident = Gauge("petkit_adapters_resident", "adapters whose tensors are on the model",
                                       registry=r)
        self.adapter_bytes = Gauge("petkit_adapter_bytes", "bytes of resident adapter tensors", registry=r)
        self.adapter_loads = Counter("petkit_adapter_loads", "adapter loads (first loads and reloads after "
                                     "eviction)", registry=r)
        self.batch_size = Histogram("petkit_batch_size", "rows per forward (prefill, decode step or classification)",
                                    ["kind"], buckets=BATCH_BUCKETS, registry=r)
        self.adapters_per_batch = Histogram("petkit_adapters_per_batch", "distinct adapters (base included) per "
                                            "forward", buckets=BATCH_BUCKETS, registry=r)
        self.latency = Histogram("petkit_request_seconds", "request latency from arrival to last byte", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("petkit_time_to_first_token_seconds", "arrival to first generated token",
                                     buckets=LATENCY_BUCKETS, registry=r)

    def observe_forward(self, kind: str, adapters: list[str | None]) -> None:
        self.batch_size.labels(kind).observe(len(adapters))
        self.adapters_per_batch.observe(len(set(adapters)))

    def text(self) -> bytes:
        return generate_latest(self.registry)
