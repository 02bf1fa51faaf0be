"""Helpers of the page index tests: indexes on a real Redis, and waiting for what their
writers do in the background."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

from redis import Redis

from radixmesh.services.hicache.page_index import RedisPageIndex, RemoteRun

TTL_S = 3  # the shortest allowed: refreshed every second, a heartbeat every second
WAIT_S = 15.0


async def eventually(check: Callable[[], object], what: str) -> None:
    """Polls `check` until it is truthy (the index writes in the background)."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


async def lookup_until(index: RedisPageIndex, keys: Sequence[bytes],
                       expected: RemoteRun) -> None:
    """Until `index` answers `expected` (a node is known to others from its next beat on)."""
    found: list[RemoteRun] = []

    async def ask() -> bool:
        found.append(await index.lookup(keys))
        return found[-1] == expected

    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await ask():
        assert asyncio.get_running_loop().time() < deadline, f"{found[-1]} != {expected}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_index(url: str, node_id: str, prefix: str, ttl_s: int = TTL_S,
                        cluster: bool = False) -> AsyncIterator[RedisPageIndex]:
    """An index advertising `node_id.test:7000`, closed on the way out."""
    index = RedisPageIndex(url, node_id, prefix, timeout_s=2.0, ttl_s=ttl_s, cluster=cluster)
    await index.start(f"{node_id}.test:7000")
    try:
        yield index
    finally:
        await index.close()


def entry_name(prefix: str, node_id: str, key: bytes) -> str:
    return f"{prefix}{{{node_id}}}:p:{key.hex()}"


def eval_calls(redis: Redis) -> int:
    """How many Lua removals Redis ran since it started."""
    return redis.info("commandstats").get("cmdstat_eval", {}).get("calls", 0)


def new_prefix() -> str:
    """Each test its own key space on the module's Redis."""
    return f"test-{uuid.uuid4().hex[:8]}:"
