"""The scheduler's link to the hicache service: attach, lookups, prefetches (from L3, and
from another node when the page index names one and the decision says fetching is faster:
`remote_decision.py`) and stores.

It performs what `HostCache` decides and reports back, on the scheduler's event loop. The
hicache service is a hint, never a dependency (design §4): while it is unreachable the
scheduler serves from the device alone, and when it comes back (a new epoch) every host slot
of the old one is forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import grpc

from radixmesh.services.scheduler.host_cache import HostCache, HostPoolSpec, PrefetchJob
from radixmesh.services.scheduler.prefetch_span import Metadata, PrefetchSpan, metadata_of
from radixmesh.services.scheduler.request import SchedReq
from radixmesh.services.scheduler.stats import SchedulerStats
from radixmesh.shared.grpc_service import open_channel
from radixmesh.shared.protos_gen import hicache_pb2, hicache_pb2_grpc
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder
from radixmesh.shared.step import WorkerInfo
from radixmesh.shared.tls import ClientTLS

logger = logging.getLogger(__name__)
CALL_TIMEOUT_S = 30.0
CALL_MARGIN_S = 2.0  # past a fetch's own deadline, for its answer to come back
RETRY_S = 2.0


class HiCacheLink:
    """Invariants: at most one attach is under way; every job handed to it ends (its request
    is never left waiting), whatever the RPC does; `wake` runs after anything that may let a
    waiting request be admitted."""

    def __init__(self, address: str, host_cache: HostCache, worker: WorkerInfo,
                 stats: SchedulerStats, waiting: Callable[[], Iterable[SchedReq]],
                 recorder: SpanRecorder = DISABLED, tls: ClientTLS | None = None,
                 remote_timeout_s: float = 5.0) -> None:
        self.address = address
        self.remote_timeout_s = remote_timeout_s  # --hicache-remote-timeout
        self._recorder = recorder
        self.host_cache = host_cache
        self._waiting = waiting
        self.worker = worker
        self.stats = stats
        self.wake: Callable[[], None] = lambda: None  # the scheduler loop's, once it exists
        self._channel = open_channel(address, tls)
        self._stub = hicache_pb2_grpc.HiCacheStub(self._channel)
        self._kick = asyncio.Event()
        self._attached = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    def kick(self) -> None:
        """Something changed (requests arrived, backups landed): look for work."""
        self._kick.set()

    async def run(self) -> None:
        """Attaches, then serves kicks, until cancelled; re-attaches after a lost link."""
        try:
            while True:
                if not self._attached.is_set():
                    await self._attach()
                    continue
                await self._kick.wait()
                self._kick.clear()
                self._start_lookups()
                self._start_stores()
        finally:
            for task in self._tasks:
                task.cancel()
            await self._channel.close()

    async def _attach(self) -> None:
        request = hicache_pb2.AttachRequest(
            layout=hicache_pb2.KVLayout(
                num_layers=self.worker.num_layers, page_size=self.worker.page_size,
                num_kv_heads=self.worker.num_kv_heads, head_dim=self.worker.head_dim,
                dtype=self.worker.kv_dtype, tp_size=self.worker.tp_size),
            num_device_pages=self.worker.num_pages, namespace_root=self.host_cache.key_root)
        try:
            reply = await self._stub.Attach(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            logger.debug("hicache at %s not attached: %s", self.address, error.details())
            await asyncio.sleep(RETRY_S)
            return
        spec = HostPoolSpec(reply.pool_name, reply.num_slots, reply.epoch, reply.storage)
        if spec.epoch != self.host_cache.epoch:
            self.host_cache.attach(spec)
        self._attached.set()
        self.wake()

    def _lost(self, error: grpc.aio.AioRpcError) -> None:
        """A call failed: if the service is gone, serve from the device until it is back."""
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION):
            logger.warning("hicache at %s: %s; serving from the device pool alone",
                           self.address, error.details())
            self.host_cache.attach(None)
            self._attached.clear()
            self._kick.set()
        self.wake()

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- prefetch ------------------------------------------------------------------------

    def _start_lookups(self) -> None:
        for job in self.host_cache.lookup_candidates(self._waiting()):
            self._spawn(self._prefetch(job))

    async def _prefetch(self, job: PrefetchJob) -> None:
        done = in_storage = prefetched = 0
        failure: grpc.aio.AioRpcError | None = None
        span = PrefetchSpan.start(self._recorder, job.req.trace, len(job.keys))
        metadata = metadata_of(span)  # None unless sampled: the hicache service's spans' parent
        try:
            reply = await self._stub.Lookup(hicache_pb2.LookupRequest(keys=job.keys),
                                            timeout=CALL_TIMEOUT_S, metadata=metadata)
            in_storage = reply.num_pages
            num_remote = self._remote_pages(job, reply)
            if self.host_cache.start_fetch(job, in_storage, num_remote, reply.remote_address):
                done = await self._read_storage(job, metadata)
                if done == job.num_storage and job.num_remote:
                    done += await self._fetch_remote(job, metadata)
        except grpc.aio.AioRpcError as error:
            failure = error
            self._lost(error)
        finally:
            if job.slots:
                prefetched = self.host_cache.finish_fetch(job, done)
                self.stats.prefetched_tokens += prefetched
                if failure is None:
                    self._start_stores()  # fetched pages go on to L3
            else:
                self.host_cache.end(job)
            if span is not None:
                span.end(in_storage, prefetched, failure)
            self.wake()

    def _remote_pages(self, job: PrefetchJob, reply: hicache_pb2.LookupReply) -> int:
        """How many of the pages another node holds (past L3's) to fetch: all or none."""
        remote = self.host_cache.remote
        if not reply.remote_num_pages or remote is None:
            return 0
        decision = remote.decide(reply.remote_num_pages, job.req.sampling.hicache_remote_policy)
        logger.debug("request %s: node %s holds %d pages past L3's %d: %s (%s; fetch ~%.1f ms, "
                     "recompute ~%.1f ms)", job.req.rid, reply.remote_node_id,
                     reply.remote_num_pages, reply.num_pages,
                     "fetch" if decision.fetch else "recompute", decision.why,
                     decision.fetch_s * 1e3, decision.recompute_s * 1e3)
        return reply.remote_num_pages if decision.fetch else 0

    async def _read_storage(self, job: PrefetchJob, metadata: Metadata | None) -> int:
        if not job.num_storage:
            return 0
        count = job.num_storage
        transfer = hicache_pb2.PageTransfer(epoch=job.epoch, keys=job.keys[:count],
                                            slots=job.slots[:count])
        return (await self._stub.Prefetch(transfer, timeout=CALL_TIMEOUT_S,
                                          metadata=metadata)).num_pages

    async def _fetch_remote(self, job: PrefetchJob, metadata: Metadata | None) -> int:
        """The local hicache service fetches the job's remote pages from the peer; it answers
        by the deadline with what came (a failed or stalled peer is no error: the rest is
        recomputed)."""
        first, deadline = job.num_storage, self.remote_timeout_s
        request = hicache_pb2.RemoteFetch(epoch=job.epoch, keys=job.keys[first:],
                                          slots=job.slots[first:], address=job.remote_address,
                                          deadline_s=deadline)
        started = time.monotonic()
        reply = await self._stub.FetchRemote(request, timeout=deadline + CALL_MARGIN_S,
                                             metadata=metadata)
        fetched = min(reply.num_pages, job.num_remote)
        remote = self.host_cache.remote
        if remote is not None:
            remote.fetched(fetched, time.monotonic() - started)
        return fetched

    # ---- stores --------------------------------------------------------------------------

    def _start_stores(self) -> None:
        stores = self.host_cache.take_stores()
        if stores:
            self._spawn(self._store([key for key, _ in stores], [slot for _, slot in stores]))

    async def _store(self, keys: list[bytes], slots: list[int]) -> None:
        epoch = self.host_cache.epoch
        try:
            reply = await self._stub.Store(
                hicache_pb2.PageTransfer(epoch=epoch, keys=keys, slots=slots),
                timeout=CALL_TIMEOUT_S)
            self.stats.stored_tokens += reply.num_pages * self.worker.page_size
        except grpc.aio.AioRpcError as error:
            self._lost(error)
        finally:
            self.host_cache.stored(slots, epoch)
