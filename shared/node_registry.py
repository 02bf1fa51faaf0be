"""Nodes (whole meshes) announce themselves in Redis; the router reads who is there.

Layout (the contract of issue 21; `P` the key prefix, default "radixmesh:"):
- `P` + `node:{node_id}`: a hash with fields node_id, address (the node front door's public
  gRPC address, what a router dials), epoch (new at every start of the front door), running,
  queued, kv_usage (the scheduler's load) and updated_ms (wall clock of the beat).
- Each beat rewrites the hash and renews its EXPIRE (the TTL): a node that stops beating
  leaves the set within the TTL, and one that beats again (after a restart: a new epoch)
  is back at its next beat. The live set is found with SCAN over `P` + `node:*`.

Write side: `NodeRegistration` (the node's front door). Read side: `NodeDirectory` (the
router). Neither raises on a Redis that does not answer: the writer retries every beat, the
reader reports the failure so the router keeps what it last knew.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as redis_asyncio

from radixmesh.shared.redis_connect import REDIS_ERRORS, connect, redacted

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "radixmesh:"
DEFAULT_HEARTBEAT_S = 1.0
DEFAULT_TTL_S = 5.0
SCAN_BATCH = 500

# Removes a registration only if it is still the one this process wrote (a restarted node's
# new registration must not go when its old process says goodbye late).
_DELETE_IF_EPOCH = """
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class NodeLoad:
    running: int = 0
    queued: int = 0
    kv_usage: float = 0.0


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """One registration as read back."""

    node_id: str
    address: str
    epoch: str
    load: NodeLoad
    updated_ms: int


def node_key(prefix: str, node_id: str) -> str:
    return f"{prefix}node:{node_id}"


def parse_entry(fields: dict[str, str]) -> NodeEntry | None:
    """The entry a hash holds, or None when it is not one (a half-written or foreign key)."""
    try:
        return NodeEntry(fields["node_id"], fields["address"], fields["epoch"],
                         NodeLoad(int(fields.get("running", 0)), int(fields.get("queued", 0)),
                                  float(fields.get("kv_usage", 0.0))),
                         int(fields.get("updated_ms", 0)))
    except (KeyError, ValueError):
        return None


class NodeRegistration:
    """Keeps one node registered while `run` runs; `close` withdraws it at once."""

    def __init__(self, url: str, node_id: str, address: str,
                 load: Callable[[], Awaitable[NodeLoad | None]], prefix: str = DEFAULT_PREFIX,
                 heartbeat_s: float = DEFAULT_HEARTBEAT_S, ttl_s: float = DEFAULT_TTL_S) -> None:
        if not heartbeat_s > 0 or ttl_s <= heartbeat_s:
            raise ValueError("the registry TTL must be longer than its heartbeat (> 0)")
        self.url, self.node_id, self.address = url, node_id, address
        self.key = node_key(prefix, node_id)
        self.epoch = uuid.uuid4().hex
        self.heartbeat_s, self.ttl_ms = heartbeat_s, int(ttl_s * 1000)
        self._load = load
        self._client: redis_asyncio.Redis = connect(url, timeout_s=min(ttl_s / 2, 2.0))
        self._beating = False  # the last beat reached Redis

    async def beat(self) -> bool:
        """One heartbeat, unless `load` says None (not serving now: no beat, so the
        registration lapses); raises the Redis error if it fails."""
        load = await self._load()
        if load is None:
            return False
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(self.key, mapping={
            "node_id": self.node_id, "address": self.address, "epoch": self.epoch,
            "running": load.running, "queued": load.queued, "kv_usage": load.kv_usage,
            "updated_ms": int(time.time() * 1000)})
        pipe.pexpire(self.key, self.ttl_ms)
        await pipe.execute()
        return True

    async def run(self) -> None:
        """Beats until cancelled; a failed beat is logged once and retried at the next."""
        while True:
            try:
                if not await self.beat():
                    await asyncio.sleep(self.heartbeat_s)
                    continue
                if not self._beating:
                    logger.info("registered as node %r (%s) in %s", self.node_id, self.address,
                                redacted(self.url))
                self._beating = True
            except REDIS_ERRORS as error:
                if self._beating:
                    logger.warning("node registry at %s: %s; retrying", redacted(self.url),
                                   error or type(error).__name__)
                self._beating = False
            except Exception:  # the load reader failed: beat again next time
                logger.exception("node registry heartbeat")
            await asyncio.sleep(self.heartbeat_s)

    async def close(self) -> None:
        """Withdraws this registration (if still ours) and closes the connection."""
        try:
            await self._client.eval(_DELETE_IF_EPOCH, 1, self.key, self.epoch)
        except REDIS_ERRORS:
            pass  # it expires by itself
        await self._client.aclose()


class NodeDirectory:
    """Reads the registered nodes."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, timeout_s: float = 2.0) -> None:
        self.url = url
        self._pattern = node_key(prefix, "*")
        self._client: redis_asyncio.Redis = connect(url, timeout_s)

    async def nodes(self) -> list[NodeEntry]:
        """Every live registration, by node id; raises a Redis error when Redis does not
        answer (the caller keeps what it knew)."""
        keys = [key async for key in self._client.scan_iter(match=self._pattern,
                                                              count=SCAN_BATCH)]
        if not keys:
            return []
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        entries = [parse_entry(fields) for fields in await pipe.execute() if fields]
        return sorted((entry for entry in entries if entry is not None),
                      key=lambda entry: entry.node_id)

    async def close(self) -> None:
        await self._client.aclose()
