"""The hicache service's Prometheus metrics (design §6), read from the core at each scrape, so
the core's counters are the only copy: prefetched and stored tokens, copy bytes and seconds each
way (bandwidth = rate(bytes) / rate(seconds)), lookups, L2 / L3 sizes, and the cross-node page
index's lookups, errors and entries when there is one. Every metric
carries `model_name`, as the front door's do."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from radixmesh.services.hicache.page_index import IndexStats
from radixmesh.services.hicache.stats import HiCacheSnapshot

PREFIX = "radixmesh:hicache_"
# Label values of `direction`: which way between the tiers the bytes went.
TO_L2, TO_L3 = "l3_to_l2", "l2_to_l3"


MODEL_LABEL = "model_name"


class _Families:
    """Makes the families of one scrape, each labelled with the model."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def counter(self, name: str, documentation: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + name, documentation, labels=[MODEL_LABEL])
        family.add_metric([self.model_name], value)
        return family

    def gauge(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(PREFIX + name, documentation, labels=[MODEL_LABEL])
        family.add_metric([self.model_name], value)
        return family

    def by_direction(self, name: str, documentation: str, prefetched: float,
                     stored: float) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + name, documentation,
                                     labels=[MODEL_LABEL, "direction"])
        family.add_metric([self.model_name, TO_L2], prefetched)
        family.add_metric([self.model_name, TO_L3], stored)
        return family


def _storage_metrics(make: _Families, snapshot: HiCacheSnapshot) -> Iterator[Metric]:
    usage, stats = snapshot.storage_usage, snapshot.storage_stats
    if usage is None or stats is None:
        return  # no L3: absent rather than a misleading 0 capacity
    yield make.gauge("l3_bytes", "Bytes of L3 storage in use", usage.bytes_used)
    yield make.gauge("l3_capacity_bytes", "Cap on L3 storage in bytes", usage.capacity_bytes)
    yield make.gauge("l3_pages", "Pages held in L3 storage", usage.num_files)
    yield make.counter("l3_corrupt_removed", "L3 pages dropped because they failed their check",
                       stats.corrupt_removed)
    yield make.counter("l3_evicted", "L3 pages evicted to stay under the cap", stats.evicted)
    yield make.counter("l3_write_failures", "L3 page writes an OS error stopped",
                       stats.write_failures)


def _index_metrics(make: _Families, stats: IndexStats) -> Iterator[Metric]:
    yield make.counter("index_lookups", "Lookups of page chains in the cross-node page index",
                       stats.lookups)
    yield make.counter("index_remote_hit_pages", "Leading pages index lookups found on another "
                       "node", stats.remote_hit_pages)
    yield make.counter("index_errors", "Page index exchanges with Redis that failed or timed "
                       "out (each a miss)", stats.errors)
    yield make.counter("index_entries_written", "Page index entries written (published or "
                       "refreshed)", stats.entries_written)
    yield make.counter("index_entries_removed", "Page index entries this node removed",
                       stats.entries_removed)
    yield make.gauge("index_connected", "1 while the last exchange with the index's Redis "
                     "succeeded", float(stats.connected))
    yield make.gauge("index_pages", "Pages this node advertises in the index",
                     stats.held_pages)


def _fetch_metrics(make: _Families, snapshot: HiCacheSnapshot) -> Iterator[Metric]:
    stats = snapshot.stats
    fetched = stats.fetched
    yield make.counter("fetched_tokens", "Tokens fetched from other nodes into L2 slots",
                       fetched.tokens)
    yield make.counter("fetched_bytes", "KV bytes fetched from other nodes into L2 slots",
                       fetched.bytes)
    yield make.counter("fetch_seconds", "Seconds fetches from other nodes took, end to end",
                       fetched.seconds)
    yield make.gauge("fetch_bandwidth_bytes_per_second", "Bytes fetched from other nodes "
                     "per second of fetching, since start",
                     fetched.bytes / fetched.seconds if fetched.seconds > 0 else 0.0)
    yield make.counter("fetch_fallbacks", "Fetches from another node that brought fewer pages "
                       "than asked (failed, stalled past the deadline, or a page rejected): "
                       "the rest was recomputed", stats.fetch_fallbacks)
    yield make.counter("fetch_rejected_pages", "Fetched pages that failed their key, length "
                       "or checksum check (never placed)", stats.fetch_rejected_pages)
    yield make.counter("served_bytes", "KV bytes this node sent to other nodes' fetches",
                       stats.served.bytes)


class HiCacheCollector(Collector):
    def __init__(self, snapshot: Callable[[], HiCacheSnapshot], model_name: str,
                 index_stats: Callable[[], IndexStats] | None = None) -> None:
        self._snapshot = snapshot
        self._index_stats = index_stats
        self._make = _Families(model_name)

    def collect(self) -> Iterator[Metric]:
        snapshot, make = self._snapshot(), self._make
        stats = snapshot.stats
        yield make.counter("prefetched_tokens", "Tokens read from L3 into L2 slots",
                           stats.prefetched.tokens)
        yield make.counter("stored_tokens", "Tokens written from L2 slots to L3",
                           stats.stored.tokens)
        yield make.by_direction("copy_bytes", "KV bytes copied between L2 and L3",
                                stats.prefetched.bytes, stats.stored.bytes)
        yield make.by_direction("copy_seconds", "Seconds spent copying KV between L2 and L3",
                                stats.prefetched.seconds, stats.stored.seconds)
        yield make.counter("lookups", "Lookups of page chains in L3", stats.lookups)
        yield make.counter("lookup_hit_tokens", "Tokens of leading pages lookups found in L3",
                           stats.lookup_hit_tokens)
        yield make.gauge("l2_slots", "L2 host pool slots grantable", snapshot.l2_slots)
        yield make.gauge("l2_bytes", "Bytes of the L2 host pool", snapshot.l2_bytes)
        yield from _storage_metrics(make, snapshot)
        yield from _fetch_metrics(make, snapshot)
        if self._index_stats is not None:  # no index: absent rather than a misleading 0
            yield from _index_metrics(make, self._index_stats())


class HiCacheMetrics:
    """One registry per instance, so several services (or tests) in a process never collide."""

    def __init__(self, snapshot: Callable[[], HiCacheSnapshot], model_name: str,
                 index_stats: Callable[[], IndexStats] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(HiCacheCollector(snapshot, model_name, index_stats))
        self._http: WSGIServer | None = None

    def serve_http(self, host: str, port: int) -> None:
        """Serves `/metrics` from a daemon thread until `close()`."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
