"""The worker's Prometheus metrics: how long each step computed, and how long the worker
waited between steps while it held requests (design §3: pipelining should keep that near 0)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, start_http_server

# From 10 µs (a plan already queued) to 1 s (the scheduler stalled).
_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


class WorkerMetrics:
    """One registry per instance, so several workers (or tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.idle_seconds = Histogram(
            "radixmesh:worker_idle_seconds",
            "Time the worker waited for the next step plan while it held requests",
            buckets=_BUCKETS, registry=self.registry)
        self.forward_seconds = Histogram(
            "radixmesh:worker_forward_seconds", "Time the worker spent executing one step",
            buckets=_BUCKETS, registry=self.registry)

    def observe_step(self, forward_seconds: float, idle_seconds: float | None) -> None:
        self.forward_seconds.observe(forward_seconds)
        if idle_seconds is not None:
            self.idle_seconds.observe(idle_seconds)

    def serve_http(self, host: str, port: int) -> None:
        """Serves `/metrics` from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
