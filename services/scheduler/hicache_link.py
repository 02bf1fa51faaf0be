"""The scheduler's link to the hicache service: attach, lookups, prefetches and stores.

It performs what `HostCache` decides and reports back, on the scheduler's event loop. The
hicache service is a hint, never a dependency (design §4): while it is unreachable the
scheduler serves from the device alone, and when it comes back (a new epoch) every host slot
of the old one is forgotten.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from radixmesh.services.scheduler.host_cache import HostCache, HostPoolSpec, PrefetchJob
from radixmesh.services.scheduler.prefetch_span import PrefetchSpan, metadata_of
from radixmesh.services.scheduler.request import SchedReq
from radixmesh.services.scheduler.stats import SchedulerStats
from radixmesh.shared.grpc_service import open_channel
from radixmesh.shared.protos_gen import hicache_pb2, hicache_pb2_grpc
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder
from radixmesh.shared.step import WorkerInfo
from radixmesh.shared.tls import ClientTLS

logger = logging.getLogger(__name__)
CALL_TIMEOUT_S = 30.0
RETRY_S = 2.0


class HiCacheLink:
    """Invariants: at most one attach is under way; every job handed to it ends (its request
    is never left waiting), whatever the RPC does; `wake` runs after anything that may let a
    waiting request be admitted."""

    def __init__(self, address: str, host_cache: HostCache, worker: WorkerInfo,
                 stats: SchedulerStats, waiting: Callable[[], list[SchedReq]],
                 recorder: SpanRecorder = DISABLED, tls: ClientTLS | None = None) -> None:
        self.address = address
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
            if reply.remote_num_pages:
                # Issue 20 slice A: known, not yet fetched (the fetch and its decision come next).
                logger.debug("request %s: L3 holds %d leading pages, node %s (%s) %d more",
                             job.req.rid, in_storage, reply.remote_node_id,
                             reply.remote_address, reply.remote_num_pages)
            if self.host_cache.start_fetch(job, reply.num_pages):
                transfer = hicache_pb2.PageTransfer(epoch=job.epoch, keys=job.keys,
                                                    slots=job.slots)
                done = (await self._stub.Prefetch(transfer, timeout=CALL_TIMEOUT_S,
                                                  metadata=metadata)).num_pages
        except grpc.aio.AioRpcError as error:
            failure = error
            self._lost(error)
        finally:
            if job.slots:
                prefetched = self.host_cache.finish_fetch(job, done)
                self.stats.prefetched_tokens += prefetched
            else:
                self.host_cache.end(job)
            if span is not None:
                span.end(in_storage, prefetched, failure)
            self.wake()

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
