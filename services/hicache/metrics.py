"""The hicache service's Prometheus metrics (design §6), read from the core at each scrape, so
the core's counters are the only copy: prefetched and stored tokens, copy bytes and seconds each
way (bandwidth = rate(bytes) / rate(seconds)), lookups, and L2 / L3 sizes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from radixmesh.services.hicache.stats import HiCacheSnapshot

PREFIX = "radixmesh:hicache_"
# Label values of `direction`: which way between the tiers the bytes went.
TO_L2, TO_L3 = "l3_to_l2", "l2_to_l3"


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


def _by_direction(name: str, documentation: str, prefetched: float,
                  stored: float) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, documentation, labels=["direction"])
    family.add_metric([TO_L2], prefetched)
    family.add_metric([TO_L3], stored)
    return family


def _storage_metrics(snapshot: HiCacheSnapshot) -> Iterator[Metric]:
    usage, stats = snapshot.storage_usage, snapshot.storage_stats
    if usage is None or stats is None:
        return  # no L3: absent rather than a misleading 0 capacity
    yield _gauge("l3_bytes", "Bytes of L3 storage in use", usage.bytes_used)
    yield _gauge("l3_capacity_bytes", "Cap on L3 storage in bytes", usage.capacity_bytes)
    yield _gauge("l3_pages", "Pages held in L3 storage", usage.num_files)
    yield _counter("l3_corrupt_removed", "L3 pages dropped because they failed their check",
                   stats.corrupt_removed)
    yield _counter("l3_evicted", "L3 pages evicted to stay under the cap", stats.evicted)
    yield _counter("l3_write_failures", "L3 page writes an OS error stopped",
                   stats.write_failures)


class HiCacheCollector(Collector):
    def __init__(self, snapshot: Callable[[], HiCacheSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        stats = snapshot.stats
        yield _counter("prefetched_tokens", "Tokens read from L3 into L2 slots",
                       stats.prefetched.tokens)
        yield _counter("stored_tokens", "Tokens written from L2 slots to L3", stats.stored.tokens)
        yield _by_direction("copy_bytes", "KV bytes copied between L2 and L3",
                            stats.prefetched.bytes, stats.stored.bytes)
        yield _by_direction("copy_seconds", "Seconds spent copying KV between L2 and L3",
                            stats.prefetched.seconds, stats.stored.seconds)
        yield _counter("lookups", "Lookups of page chains in L3", stats.lookups)
        yield _counter("lookup_hit_tokens", "Tokens of leading pages lookups found in L3",
                       stats.lookup_hit_tokens)
        yield _gauge("l2_slots", "L2 host pool slots grantable", snapshot.l2_slots)
        yield _gauge("l2_bytes", "Bytes of the L2 host pool", snapshot.l2_bytes)
        yield from _storage_metrics(snapshot)


class HiCacheMetrics:
    """One registry per instance, so several services (or tests) in a process never collide."""

    def __init__(self, snapshot: Callable[[], HiCacheSnapshot]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(HiCacheCollector(snapshot))
        self._http: WSGIServer | None = None

    def serve_http(self, host: str, port: int) -> None:
        """Serves `/metrics` from a daemon thread until `close()`."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
