"""The HiCache gRPC service: a thin layer over HiCache. Each call runs on a thread (the core
blocks on file I/O), and errors leave through the shared table.

A Lookup, Prefetch or FetchRemote that carries a sampled `traceparent` in its metadata (the
scheduler's `hicache.prefetch` span) gets a span of its own, `hicache.lookup` /
`hicache.prefetch` / `hicache.fetch_remote`, as that span's child. Stores carry none: they
write pages of the tree, not of one request. ReadPages is another node's hicache asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import grpc

from radixmesh.services.hicache.attachment import KVLayout
from radixmesh.services.hicache.cache import HiCache
from radixmesh.services.hicache.page_batch_wire import encode_page_batch
from radixmesh.services.hicache.page_index import NO_RUN, PageIndex
from radixmesh.services.hicache.peer_link import PeerFetcher
from radixmesh.services.hicache.peer_pages import BATCH_BYTES
from radixmesh.shared.errors import InvalidRequestError, RadixMeshError
from radixmesh.shared.grpc_service import abort_with
from radixmesh.shared.protos_gen import common_pb2, hicache_pb2, hicache_pb2_grpc
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder, now_ns
from radixmesh.shared.trace_context import NO_TRACE, TraceContext

logger = logging.getLogger(__name__)
Result = TypeVar("Result")
# prefetch or store: (epoch, keys, slots, stop) -> leading pages moved
Transfer = Callable[[str, Sequence[bytes], Sequence[int], threading.Event], int]


def layout_from_proto(layout: hicache_pb2.KVLayout) -> KVLayout:
    return KVLayout(num_layers=layout.num_layers, page_size=layout.page_size,
                    num_kv_heads=layout.num_kv_heads, head_dim=layout.head_dim,
                    dtype=layout.dtype, tp_size=layout.tp_size or 1)


class HiCacheServicer(hicache_pb2_grpc.HiCacheServicer):
    def __init__(self, cache: HiCache, recorder: SpanRecorder = DISABLED,
                 index: PageIndex | None = None, fetcher: PeerFetcher | None = None) -> None:
        self._cache = cache
        self._recorder = recorder
        self._index = index
        self._fetcher = fetcher or PeerFetcher(cache)

    async def Attach(self, request: hicache_pb2.AttachRequest,
                     context: grpc.aio.ServicerContext) -> hicache_pb2.AttachReply:
        layout = layout_from_proto(request.layout)
        attachment = await self._run(context, lambda _: self._cache.attach(
            layout, request.num_device_pages, request.namespace_root))
        return hicache_pb2.AttachReply(pool_name=attachment.pool_name,
                                       num_slots=attachment.num_slots, epoch=attachment.epoch,
                                       storage=attachment.storage)

    async def Lookup(self, request: hicache_pb2.LookupRequest,
                     context: grpc.aio.ServicerContext) -> hicache_pb2.LookupReply:
        keys = list(request.keys)
        trace = self._trace_of(context)
        start = now_ns() if trace else 0
        num_pages = await self._run(context, lambda _: self._cache.lookup(keys), trace,
                                    "hicache.lookup")
        # Past what L3 holds, other nodes may hold more (a hint: never an error, never long).
        remote = NO_RUN
        if self._index is not None and num_pages < len(keys):
            remote = await self._index.lookup(keys[num_pages:])
        if self._recorder.wants(trace):
            self._recorder.record("hicache.lookup", trace, start, now_ns(), {
                "radixmesh.hicache.asked_pages": len(keys),
                "radixmesh.hicache.storage_pages": num_pages,
                "radixmesh.hicache.remote_pages": remote.num_pages})
        return hicache_pb2.LookupReply(
            num_pages=num_pages, remote_num_pages=remote.num_pages,
            remote_node_id=remote.node_id, remote_address=remote.address,
            remote_epoch=remote.epoch)

    async def Prefetch(self, request: hicache_pb2.PageTransfer,
                       context: grpc.aio.ServicerContext) -> hicache_pb2.TransferReply:
        trace = self._trace_of(context)
        start = now_ns() if trace else 0
        reply = await self._transfer(self._cache.prefetch, request, context, trace,
                                     "hicache.prefetch")
        if self._recorder.wants(trace):
            self._recorder.record("hicache.prefetch", trace, start, now_ns(), {
                "radixmesh.hicache.asked_pages": len(request.keys),
                "radixmesh.hicache.prefetched_pages": reply.num_pages})
        return reply

    async def Store(self, request: hicache_pb2.PageTransfer,
                    context: grpc.aio.ServicerContext) -> hicache_pb2.TransferReply:
        return await self._transfer(self._cache.store, request, context)

    async def Clear(self, request: common_pb2.Empty,
                    context: grpc.aio.ServicerContext) -> common_pb2.Empty:
        removed = await self._run(context, lambda _: self._cache.clear())
        logger.info("cleared %d L3 pages", removed)
        return common_pb2.Empty()

    async def FetchRemote(self, request: hicache_pb2.RemoteFetch,
                          context: grpc.aio.ServicerContext) -> hicache_pb2.TransferReply:
        keys, slots = list(request.keys), list(request.slots)
        if not request.address:
            await abort_with(context, InvalidRequestError("address", "names no peer"))
        if not (math.isfinite(request.deadline_s) and request.deadline_s > 0):
            await abort_with(context, InvalidRequestError(
                "deadline_s", f"must be > 0 seconds, got {request.deadline_s}"))
        # Keys, slots and epoch are checked (placing nothing) before any byte is asked for.
        await self._run(context, lambda _: self._cache.place_fetched(request.epoch, keys,
                                                                     slots, []))
        trace = self._trace_of(context)
        start = now_ns() if trace else 0
        outcome = await self._fetcher.fetch(request.epoch, keys, slots, request.address,
                                            request.deadline_s)
        self._cache.fetched(outcome.num_pages, len(keys), outcome.seconds)
        if self._recorder.wants(trace):
            self._recorder.record("hicache.fetch_remote", trace, start, now_ns(), {
                "radixmesh.hicache.asked_pages": len(keys),
                "radixmesh.hicache.fetched_pages": outcome.num_pages,
                "radixmesh.hicache.peer": request.address,
                "radixmesh.hicache.fetch_problem": outcome.problem})
        return hicache_pb2.TransferReply(num_pages=outcome.num_pages)

    async def ReadPages(self, request: hicache_pb2.PageRead,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        keys, root = list(request.keys), request.namespace_root

        def read_from(first: int) -> asyncio.Future[tuple[int, int, bytes]]:
            return asyncio.ensure_future(
                self._run(context, lambda _: self._read_batch(root, keys[first:])))

        # Batch i + 1 is read on a thread while batch i is sent (file reads and the join let
        # go of the GIL); a call that ends meanwhile cancels the read, which waits for its
        # thread (`_run`).
        reading: asyncio.Future[tuple[int, int, bytes]] | None = read_from(0) if keys else None
        sent = 0
        try:
            while reading is not None:
                num_pages, size, batch = await reading
                sent += num_pages
                # Short of a full batch, it stopped at a page L3 lacks: nothing follows.
                reading = read_from(sent) if size >= BATCH_BYTES and sent < len(keys) else None
                if num_pages:
                    yield batch
        finally:
            if reading is not None and not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reading

    def _read_batch(self, root: bytes, keys: Sequence[bytes]) -> tuple[int, int, bytes]:
        """(pages, their bytes, the PageBatch) of the leading `keys` L3 holds, serialized
        here (server.py registers ReadPages to send bytes): on the reading thread, so that
        joining the batch's MiBs never holds up the event loop's sends."""
        pages = self._cache.read_for_peer(root, keys, BATCH_BYTES)
        batch = encode_page_batch((key, page.data, page.checksum)
                                  for key, page in zip(keys, pages, strict=False))
        return len(pages), sum(len(page.data) for page in pages), batch

    async def _transfer(self, transfer: Transfer, request: hicache_pb2.PageTransfer,
                        context: grpc.aio.ServicerContext, trace: TraceContext = NO_TRACE,
                        span_name: str = "") -> hicache_pb2.TransferReply:
        keys, slots = list(request.keys), list(request.slots)
        num_pages = await self._run(
            context, lambda stop: transfer(request.epoch, keys, slots, stop), trace, span_name)
        return hicache_pb2.TransferReply(num_pages=num_pages)

    def _trace_of(self, context: grpc.aio.ServicerContext) -> TraceContext:
        """The caller's span, when tracing is on and the call names a sampled one."""
        if not self._recorder.enabled:
            return NO_TRACE
        metadata = dict(context.invocation_metadata() or ())
        return TraceContext.from_carrier(metadata.get)

    async def _run(self, context: grpc.aio.ServicerContext,
                   work: Callable[[threading.Event], Result], trace: TraceContext = NO_TRACE,
                   span_name: str = "") -> Result:
        """`work(stop)` on a thread. A cancelled call (deadline, caller gone) sets `stop` and
        waits for the work to end before the RPC does, so no page moves into or out of the
        caller's slots once its call is over. A failure under a sampled `trace` is recorded
        as the span `span_name`, with its error."""
        stop = threading.Event()
        start = now_ns() if trace else 0
        running = asyncio.ensure_future(asyncio.to_thread(work, stop))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            stop.set()
            with contextlib.suppress(Exception):
                await running
            raise
        except Exception as error:
            if not isinstance(error, RadixMeshError):
                logger.exception("a HiCache call failed")
            if self._recorder.wants(trace):
                self._recorder.record(span_name, trace, start, now_ns(), error=error)
            await abort_with(context, error)
