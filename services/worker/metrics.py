"""The worker's Prometheus metrics: how long each step computed, and how long the worker
waited between steps while it held requests (design §3: pipelining should keep that near 0)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, start_http_server

# From 10 µs (a plan already queued) to 1 s (the scheduler stalled).
_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


class WorkerMetrics:
    """One registry per instance, so several workers (or tests) never collide. Every metric
    carries `model_name`, as the front door's do. The idle histogram's `_sum` is the worker's
    total idle seconds; `rate(_sum) / rate(forward _sum)` says how well pipelining hides the
    scheduler."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.idle_seconds = Histogram(
            "radixmesh:worker_idle_seconds",
            "Time the worker waited for the next step plan while it held requests",
            ["model_name"], buckets=_BUCKETS, registry=self.registry).labels(model_name)
        self.forward_seconds = Histogram(
            "radixmesh:worker_forward_seconds", "Time the worker spent executing one step",
            ["model_name"], buckets=_BUCKETS, registry=self.registry).labels(model_name)

    def observe_step(self, forward_seconds: float, idle_seconds: float | None) -> None:
        self.forward_seconds.observe(forward_seconds)
        if idle_seconds is not None:
            self.idle_seconds.observe(idle_seconds)

    def serve_http(self, host: str, port: int) -> None:
        """Serves `/metrics` from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
