"""The page index in Redis (`--hicache-redis-url`); the key layout is in redis_layout.py.

A node advertises the pages of its L3: an entry is written once the page's file is in place
(the core calls `held` after the write) and removed when the file goes. Pages in L2 alone are
not advertised: the scheduler may reuse a host slot at any moment without telling this service,
while an L3 file is this service's own, named and checked by its key, and outlives the slot.

One writer task owns every write, so writes land in the order the changes were made; it
renews the heartbeat every few seconds (learning the other nodes on the way), re-publishes
every held page every third of the TTL (renewing the entries), and after any error retries
until Redis answers again, then re-publishes everything held (a restarted Redis has lost the
index; the heartbeat's previous value tells a Redis that lost it behind our back as well).
Lookups go straight to Redis: one pipeline, one MGET per other node, under the deadline.
Needs Redis 6.2 or later (SET ... GET); works on a single Redis and on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence

from radixmesh.services.hicache.page_index.base import (
    NO_RUN,
    IndexStats,
    PageIndex,
    RemoteRun,
)
from radixmesh.services.hicache.page_index.held_pages import PUBLISH, REMOVE, HeldPages
from radixmesh.services.hicache.page_index.redis_client import check_credentials, make_client
from radixmesh.services.hicache.page_index.redis_layout import (
    DELETE_IF_EPOCH,
    RedisLayout,
    best_run,
    entry_value,
    heartbeat_value,
    node_run,
)
from radixmesh.shared.redis_connect import REDIS_ERRORS, redacted

logger = logging.getLogger(__name__)

MAX_BEAT_S = 5.0        # a dead node's pages stop being reported within 3 beats of its death
RETRY_S = 1.0           # after an error, the writer asks Redis again this often
WRITE_TIMEOUT_S = 5.0   # a write pipeline (up to CHUNK commands) may take this long
CHUNK = 2000            # commands per write pipeline


class RedisPageIndex(PageIndex):
    """See the module docstring. The epoch is new per instance: one per start of the service."""

    def __init__(self, url: str, node_id: str, key_prefix: str, timeout_s: float,
                 ttl_s: int, cluster: bool = False) -> None:
        self.url, self.node_id, self.timeout_s, self.ttl_s = url, node_id, timeout_s, ttl_s
        self.epoch = uuid.uuid4().hex
        self.layout = RedisLayout(key_prefix)
        self.beat_s = min(MAX_BEAT_S, ttl_s / 3)
        self.refresh_s = ttl_s / 3
        self.pages = HeldPages()
        self._address = ""
        self._client = make_client(url, max(WRITE_TIMEOUT_S, timeout_s), cluster)
        self._stats = IndexStats()
        self._peers: list[str] = []
        # Lookups ask Redis only while this is set: cleared by a failed lookup (so the next
        # ones miss at once instead of each waiting out the deadline) until a beat succeeds.
        self._ready = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # ---- what the hicache core says ------------------------------------------------------

    def held(self, keys: Sequence[bytes]) -> None:
        self.pages.add(keys)

    def gone(self, keys: Sequence[bytes]) -> None:
        self.pages.remove(keys)

    def reset(self, keys: Sequence[bytes]) -> None:
        self.pages.reset(keys)

    def stats(self) -> IndexStats:
        return dataclasses.replace(self._stats, held_pages=len(self.pages))

    # ---- life ----------------------------------------------------------------------------

    async def start(self, address: str) -> None:
        self._address = address
        await check_credentials(self._client, self.url, max(self.timeout_s, 1.0))
        loop = asyncio.get_running_loop()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to write
                loop.call_soon_threadsafe(self._wake.set)
        self.pages.wake = wake
        self._task = asyncio.create_task(self._run(), name="page-index-writer")
        logger.info("page index: node %s (epoch %s) at %s, Redis %s", self.node_id,
                    self.epoch, address, redacted(self.url))

    async def close(self) -> None:
        self.pages.wake = lambda: None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # Peers stop believing this node's entries at once; the entries expire by their TTL.
        with contextlib.suppress(*REDIS_ERRORS):
            async with asyncio.timeout(self.timeout_s):
                await self._client.eval(DELETE_IF_EPOCH, 1, self.layout.heartbeat(self.node_id),
                                        self.epoch)
        await self._client.aclose()

    # ---- lookups -------------------------------------------------------------------------

    async def lookup(self, keys: Sequence[bytes]) -> RemoteRun:
        peers = self._peers
        if not keys or not peers or not self._ready:
            return NO_RUN  # nobody else to ask, or Redis is known to be down: a miss at once
        self._count(lookups=1)
        try:
            async with asyncio.timeout(self.timeout_s):
                pipe = self._client.pipeline(transaction=False)
                for node in peers:
                    # One slot per node (its hash tag); spelled as a raw command because
                    # redis-py's cluster pipeline refuses `mget`, which could cross slots.
                    pipe.execute_command("MGET", self.layout.heartbeat(node),
                                         *(self.layout.entry(node, key) for key in keys))
                replies = await pipe.execute()
        except Exception as error:  # any failure is a miss (the invariant): never raised
            if not isinstance(error, REDIS_ERRORS):
                logger.exception("page index lookup")
            self._count(errors=1)
            logger.debug("page index lookup failed: %r", error)
            self._ready = False
            self._wake.set()  # the writer asks Redis how it is
            return NO_RUN
        run = best_run([node_run(node, reply)
                        for node, reply in zip(peers, replies, strict=True)])
        self._count(remote_hit_pages=run.num_pages)
        return run

    # ---- the writer ----------------------------------------------------------------------

    async def _run(self) -> None:
        next_beat = next_refresh = 0.0
        while True:
            try:
                was_connected = self._stats.connected
                if not (was_connected and self._ready) or time.monotonic() >= next_beat:
                    lost = await self._beat()
                    next_beat = time.monotonic() + self.beat_s
                    if lost or not was_connected:
                        next_refresh = 0.0  # Redis lost the index (or never had it): refill
                if time.monotonic() >= next_refresh:
                    await self._publish_all(announce=not was_connected)
                    next_refresh = time.monotonic() + self.refresh_s
                await self._write_changes()
            except REDIS_ERRORS as error:
                self._failed(error)
                await asyncio.sleep(RETRY_S)
                continue
            except Exception as error:  # a bug or a surprise of the client: never fatal
                logger.exception("page index writer")
                self._failed(error)
                await asyncio.sleep(RETRY_S)
                continue
            timeout = max(0.0, min(next_beat, next_refresh) - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()

    async def _beat(self) -> bool:
        """Renews the heartbeat and learns the nodes; True when Redis had lost ours."""
        mine = heartbeat_value(self.epoch, self._address)
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            pipe = self._client.pipeline(transaction=False)
            # Set before the node joins the set, so a listed node without one is dead.
            pipe.set(self.layout.heartbeat(self.node_id), mine, px=int(3000 * self.beat_s),
                     get=True)
            pipe.sadd(self.layout.nodes, self.node_id)
            pipe.smembers(self.layout.nodes)
            previous, _, nodes = await pipe.execute()
        self._peers = sorted(node for node in nodes if node != self.node_id)
        self._ready = True
        if not self._stats.connected:
            self._stats = dataclasses.replace(self._stats, connected=True)
        return previous != mine

    async def _publish_all(self, announce: bool) -> None:
        keys, removals = self.pages.take_all()
        if announce:
            logger.info("page index: Redis answers; publishing the %d pages held", len(keys))
        try:
            await self._write({key: PUBLISH for key in keys} | {key: REMOVE for key in removals})
        except Exception:
            # The held pages go out again with the next full publish; removals must not wait.
            self.pages.put_back({key: REMOVE for key in removals})
            raise

    async def _write_changes(self) -> None:
        changes = self.pages.take_changes()
        try:
            await self._write(changes)
        except Exception:
            self.pages.put_back(changes)
            raise

    async def _write(self, changes: dict[bytes, bool]) -> None:
        value = entry_value(self.epoch, self._address)
        items = list(changes.items())
        for start in range(0, len(items), CHUNK):
            chunk = items[start:start + CHUNK]
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                pipe = self._client.pipeline(transaction=False)
                for key, change in chunk:
                    name = self.layout.entry(self.node_id, key)
                    if change is PUBLISH:
                        pipe.set(name, value, ex=self.ttl_s)
                    else:
                        pipe.eval(DELETE_IF_EPOCH, 1, name, self.epoch)
                results = await pipe.execute()
            published = sum(1 for _, change in chunk if change is PUBLISH)
            removed = sum(1 for (_, change), result in zip(chunk, results, strict=True)
                          if change is not PUBLISH and result)
            self._count(entries_written=published, entries_removed=removed)

    def _failed(self, error: BaseException) -> None:
        if self._stats.connected:
            logger.warning("page index: Redis %s failed (%s); lookups are misses until it "
                           "answers again", redacted(self.url), error or type(error).__name__)
        self._ready = False
        self._stats = dataclasses.replace(self._stats, connected=False,
                                          errors=self._stats.errors + 1)

    def _count(self, **deltas: int) -> None:
        self._stats = dataclasses.replace(self._stats, **{
            name: getattr(self._stats, name) + delta for name, delta in deltas.items()})
