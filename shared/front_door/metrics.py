"""Prometheus metrics of the front door, named under `radixmesh:` as SGLang names its own.

Latencies are observed here, where the client's request arrives and its tokens leave, so they
include every hop of the mesh. Scheduler gauges (`num_running_reqs`, ...) are copied from the
scheduler's `GetLoad` at scrape time rather than pushed, so they are never stale. Each
instance has its own registry: several servers in one process (tests) do not collide. Every
metric carries a `model_name` label, the served model's name, as SGLang's do, so one dashboard
can tell the models of several meshes apart.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from radixmesh.shared.mesh_info import SchedulerLoad
from radixmesh.shared.requests import FinishReason, Usage

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0, 300.0)
_LOAD_GAUGES = {
    "num_running_reqs": "requests the scheduler is running",
    "num_queue_reqs": "requests waiting in the scheduler's queue",
    "token_usage": "share of the KV pool in use",
    "cache_hit_rate": "prompt tokens served from the prefix cache / all prompt tokens",
    "gen_throughput": "output tokens per second, over the scheduler's last decode log window",
}
MODEL_LABEL = "model_name"


class FrontDoorMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = registry = CollectorRegistry()
        model = {MODEL_LABEL: model_name}
        # Children bound to the model once here: the hot path never looks a label up.
        self._gauges = {name: Gauge(f"radixmesh:{name}", doc, [MODEL_LABEL],
                                    registry=registry).labels(**model)
                        for name, doc in _LOAD_GAUGES.items()}
        self._requests = Counter("radixmesh:num_requests", "requests finished, by reason",
                                 [MODEL_LABEL, "finish_reason"], registry=registry)
        self._model_name = model_name
        self.bad_requests = Counter("radixmesh:num_bad_requests", "requests rejected as invalid",
                                    [MODEL_LABEL], registry=registry).labels(**model)
        self.prompt_tokens = Counter("radixmesh:prompt_tokens", "prompt tokens of finished "
                                     "requests", [MODEL_LABEL], registry=registry).labels(**model)
        self.generation_tokens = Counter("radixmesh:generation_tokens", "output tokens streamed",
                                         [MODEL_LABEL], registry=registry).labels(**model)
        self.ttft = Histogram("radixmesh:time_to_first_token_seconds", "arrival to first token",
                              [MODEL_LABEL], buckets=LATENCY_BUCKETS,
                              registry=registry).labels(**model)
        self.itl = Histogram("radixmesh:inter_token_latency_seconds",
                             "gap between successive tokens of a request", [MODEL_LABEL],
                             buckets=LATENCY_BUCKETS, registry=registry).labels(**model)
        self.e2e = Histogram("radixmesh:e2e_request_latency_seconds", "arrival to finish",
                             [MODEL_LABEL], buckets=LATENCY_BUCKETS,
                             registry=registry).labels(**model)
        self._tiers = TierCounters(model_name)
        self.replicas_ready = Gauge("radixmesh:dp_replicas_ready", "data-parallel replicas the "
                                    "front door can send requests to", [MODEL_LABEL],
                                    registry=registry).labels(**model)
        registry.register(self._tiers)

    def on_tokens(self, num_tokens: int, since_previous: float | None,
                  since_arrival: float) -> None:
        """`since_previous` is None for a request's first tokens: they give its TTFT."""
        self.generation_tokens.inc(num_tokens)
        if since_previous is None:
            self.ttft.observe(since_arrival)
            return
        # Tokens arriving together share the gap, so batching deltas does not hide latency.
        for _ in range(num_tokens):
            self.itl.observe(since_previous / num_tokens)

    def on_finish(self, finish: FinishReason, usage: Usage, since_arrival: float) -> None:
        self._requests.labels(self._model_name, finish.kind.value).inc()
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.e2e.observe(since_arrival)

    def on_bad_request(self) -> None:
        self.bad_requests.inc()

    def set_load(self, load: SchedulerLoad) -> None:
        for name, gauge in self._gauges.items():
            gauge.set(getattr(load, name))
        self._tiers.load = load

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class TierCounters(Collector):
    """The scheduler's cumulative tier counters, as of its last `GetLoad`: a collector rather
    than Counters, since the scheduler counts and the front door only shows its totals."""

    def __init__(self, model_name: str) -> None:
        self.load = SchedulerLoad()
        self._model_name = model_name

    def collect(self) -> Iterator[CounterMetricFamily]:
        # Tiers device, host, storage; `remote` (a page fetched from another node) is reserved
        # for the cross-node fetch and appears once something counts it.
        cached = CounterMetricFamily("radixmesh:cached_tokens", "prompt tokens served from "
                                     "each tier of the cache", labels=[MODEL_LABEL, "tier"])
        for tier, value in self.load.cached_tokens_by_tier().items():
            cached.add_metric([self._model_name, tier], value)
        yield cached
        # L3 traffic (prefetched, stored) is the hicache service's to export, from its own
        # /metrics; the copies the worker makes are planned, and so counted, here.
        load = self.load
        for name, value, doc in (
                ("backed_up", load.backed_up_tokens, "copied from the device pool to host memory"),
                ("loaded", load.loaded_tokens, "copied from host memory to the device pool")):
            family = CounterMetricFamily(f"radixmesh:hicache_{name}_tokens", f"tokens {doc}",
                                         labels=[MODEL_LABEL])
            family.add_metric([self._model_name], value)
            yield family
