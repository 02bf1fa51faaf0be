"""The HiCache gRPC service: a thin layer over HiCache. Each call runs on a thread (the core
blocks on file I/O), and errors leave through the shared table."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc

from radixmesh.services.hicache.attachment import KVLayout
from radixmesh.services.hicache.cache import HiCache
from radixmesh.shared.errors import RadixMeshError
from radixmesh.shared.grpc_service import abort_with
from radixmesh.shared.protos_gen import common_pb2, hicache_pb2, hicache_pb2_grpc

logger = logging.getLogger(__name__)
Result = TypeVar("Result")
# prefetch or store: (epoch, keys, slots, stop) -> leading pages moved
Transfer = Callable[[str, Sequence[bytes], Sequence[int], threading.Event], int]


def layout_from_proto(layout: hicache_pb2.KVLayout) -> KVLayout:
    return KVLayout(num_layers=layout.num_layers, page_size=layout.page_size,
                    num_kv_heads=layout.num_kv_heads, head_dim=layout.head_dim,
                    dtype=layout.dtype)


class HiCacheServicer(hicache_pb2_grpc.HiCacheServicer):
    def __init__(self, cache: HiCache) -> None:
        self._cache = cache

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
        return hicache_pb2.LookupReply(
            num_pages=await self._run(context, lambda _: self._cache.lookup(keys)))

    async def Prefetch(self, request: hicache_pb2.PageTransfer,
                       context: grpc.aio.ServicerContext) -> hicache_pb2.TransferReply:
        return await self._transfer(self._cache.prefetch, request, context)

    async def Store(self, request: hicache_pb2.PageTransfer,
                    context: grpc.aio.ServicerContext) -> hicache_pb2.TransferReply:
        return await self._transfer(self._cache.store, request, context)

    async def Clear(self, request: common_pb2.Empty,
                    context: grpc.aio.ServicerContext) -> common_pb2.Empty:
        removed = await self._run(context, lambda _: self._cache.clear())
        logger.info("cleared %d L3 pages", removed)
        return common_pb2.Empty()

    async def _transfer(self, transfer: Transfer, request: hicache_pb2.PageTransfer,
                        context: grpc.aio.ServicerContext) -> hicache_pb2.TransferReply:
        keys, slots = list(request.keys), list(request.slots)
        num_pages = await self._run(
            context, lambda stop: transfer(request.epoch, keys, slots, stop))
        return hicache_pb2.TransferReply(num_pages=num_pages)

    async def _run(self, context: grpc.aio.ServicerContext,
                   work: Callable[[threading.Event], Result]) -> Result:
        """`work(stop)` on a thread. A cancelled call (deadline, caller gone) sets `stop` and
        waits for the work to end before the RPC does, so no page moves into or out of the
        caller's slots once its call is over."""
        stop = threading.Event()
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
            await abort_with(context, error)
