"""Fetching pages from another node's hicache service into this node's L2 slots.

The asking side of hicache <-> hicache: one ReadPages stream per fetch to the peer the index
named, each batch checked and written off the event loop (a thread: hashing a few MiB must not
stall the other calls), the fetch bounded by its deadline. A peer that is gone, refuses, stalls
or sends a bad page ends the fetch early, never in an error: the caller gets the leading pages
placed, and the scheduler recomputes the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import grpc

from radixmesh.services.hicache.cache import HiCache
from radixmesh.services.hicache.page_batch_wire import MalformedBatchError, decode_page_batch
from radixmesh.shared.errors import RadixMeshError
from radixmesh.shared.grpc_service import open_channel
from radixmesh.shared.protos_gen import hicache_pb2
from radixmesh.shared.tls import ClientTLS

logger = logging.getLogger(__name__)
_SERVICE = hicache_pb2.DESCRIPTOR.services_by_name["HiCache"]
READ_PAGES_PATH = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['ReadPages'].name}"
MAX_PEERS = 64  # channels kept open; past it the oldest is closed (peers come and go)


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    num_pages: int   # leading pages now in their slots
    seconds: float
    problem: str = ""  # why it ended short, when it did


@dataclass(slots=True)
class _Progress:
    placed: int = 0  # leading pages written to their slots so far


class PeerFetcher:
    """Invariant: when `fetch` returns (or is cancelled), no write to the caller's slots is
    still under way: a batch being placed is waited for, so the slots may be reused at once."""

    def __init__(self, cache: HiCache, tls: ClientTLS | None = None) -> None:
        self._cache = cache
        self._tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def fetch(self, epoch: str, keys: Sequence[bytes], slots: Sequence[int],
                    address: str, deadline_s: float) -> FetchOutcome:
        started = time.perf_counter()
        progress = _Progress()
        root = self._cache.namespace_root
        if root is None:
            return FetchOutcome(0, 0.0, "no pool attached")
        try:
            async with asyncio.timeout(deadline_s):
                problem = await self._stream(epoch, keys, slots, address, root, progress)
        except TimeoutError:
            problem = f"past its deadline of {deadline_s:g} s"
        except grpc.aio.AioRpcError as error:
            problem = f"{error.code().name}: {error.details()}"
        seconds = time.perf_counter() - started
        if problem:
            logger.warning("fetch of %d pages from %s ended after %d: %s; the rest is "
                           "recomputed", len(keys), address, progress.placed, problem)
        return FetchOutcome(progress.placed, seconds, problem)

    async def _stream(self, epoch: str, keys: Sequence[bytes], slots: Sequence[int],
                      address: str, root: bytes, progress: _Progress) -> str:
        """Why the fetch ended short ("" when every page came). Batch i is written to its
        slots on a thread while the loop receives batch i + 1 (the writes let go of the GIL);
        at most one batch is being written at a time, and none is after this returns."""
        call = read_pages_raw(self._channel(address))(
            hicache_pb2.PageRead(namespace_root=root, keys=keys))
        placing: _Placing | None = None  # the batch being written
        num_sent, problem = 0, ""  # pages handed to a write so far; why it ended short
        try:
            async for raw in call:
                try:
                    pages = decode_page_batch(raw)
                except MalformedBatchError as error:
                    problem = f"the peer's batch is malformed: {error}"
                    break
                if placing is not None:
                    settled, placing = placing, None
                    if not await _settled(settled, progress):
                        break
                placing = _Placing(asyncio.ensure_future(asyncio.to_thread(
                    self._cache.place_fetched, epoch, keys[num_sent:], slots[num_sent:], pages)),
                    len(pages))
                num_sent += len(pages)
                if num_sent >= len(keys):
                    break
            if placing is not None:
                settled, placing = placing, None
                await _settled(settled, progress)
        except RadixMeshError as error:  # our pool went away (a re-attach): nothing fits
            return str(error)
        finally:
            call.cancel()
            if placing is not None and not placing.writes.done():
                await _uncancelled(placing.writes)  # its slots may be reused once we return
        if problem:
            return problem
        if progress.placed < num_sent:
            return "a page failed its check"
        if progress.placed < len(keys):
            return f"the peer holds {progress.placed} of the {len(keys)} pages"
        return ""

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            if len(self._channels) >= MAX_PEERS:
                oldest = next(iter(self._channels))
                asyncio.ensure_future(self._channels.pop(oldest).close())
            channel = self._channels[address] = open_channel(address, self._tls)
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


@dataclass(frozen=True, slots=True)
class _Placing:
    writes: asyncio.Future[int]  # the thread writing a batch: how many pages it placed
    num_pages: int               # how many the batch held


async def _settled(placing: _Placing, progress: _Progress) -> bool:
    """Waits for a batch's writes (to their end, even if cancelled meanwhile) and counts its
    pages; False when one of them failed its check (those after it are not placed)."""
    done = await _uncancelled(placing.writes)
    progress.placed += done
    return done == placing.num_pages


async def _uncancelled(work: Awaitable[int]) -> int:
    """Awaits `work` (a thread writing slots) to its end even if the caller is cancelled
    meanwhile, then lets the cancellation through: slots are never written after a fetch is
    over."""
    running = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await running
        raise


def read_pages_raw(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable:
    """ReadPages on `channel`, each PageBatch it streams back as its serialized bytes."""
    return channel.unary_stream(READ_PAGES_PATH,
                                request_serializer=hicache_pb2.PageRead.SerializeToString,
                                response_deserializer=None)
