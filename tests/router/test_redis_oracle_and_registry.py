"""Against a real redis-server: the exact oracle reads what the hicache page index writes
(node, epoch, leading pages of the prompt under the nodes' key namespace), and misses when
Redis does not answer; the node registry's entries come and go with their heartbeats."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from radixmesh.shared.node_registry import NodeDirectory, NodeLoad, NodeRegistration
from radixmesh.shared.page_index_layout import RedisLayout
from radixmesh.shared.page_keys import KeyNamespace, page_keys
from radixmesh.shared.redis_connect import connect
from radixmesh.shared.redis_prefixes import RedisPrefixes
from tests.hicache.index_helpers import running_index
from tests.hicache.redis_server import RedisServer

WAIT_S = 15.0
NAMESPACE = KeyNamespace("tiny", "f" * 64, "float32", page_size=4, tp_layout="tp1")
PROMPT = list(range(1, 31))  # 7 whole pages and 2 tokens


def test_the_exact_oracle_reads_the_page_index_the_nodes_write(
        redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    keys = page_keys(NAMESPACE.root(), PROMPT, NAMESPACE.page_size)
    salted = page_keys(NAMESPACE.with_salt("s").root(), PROMPT, NAMESPACE.page_size)

    async def scenario() -> None:
        client = connect(redis_server.url(), timeout_s=2.0)
        oracle = RedisPrefixes(client, RedisLayout(prefix), lambda: ["a", "b", "c"],
                               NAMESPACE, timeout_s=2.0)
        async with running_index(redis_server.url(), "a", prefix) as a, \
                running_index(redis_server.url(), "b", prefix) as b:
            a.held(keys[:5])
            b.held(keys[:2] + keys[3:])  # a hole at page 2: two leading pages
            b.held(salted[:7])

            await eventually(lambda: oracle.lookup(PROMPT), {"a": 20, "b": 8, "c": 0})
            assert await oracle.lookup(PROMPT, cache_salt="s") == {"a": 0, "b": 28, "c": 0}
            assert await oracle.lookup(PROMPT[:3]) == {"a": 0, "b": 0, "c": 0}  # no page
        # Closed nodes withdraw their entries (and heartbeats): nothing is held.
        assert await oracle.lookup(PROMPT) == {"a": 0, "b": 0, "c": 0}
        oracle.namespace = None  # not learned yet: every lookup a miss
        assert await oracle.lookup(PROMPT) == {"a": 0, "b": 0, "c": 0}
        await client.aclose()
        gone = connect("redis://127.0.0.1:1/0", timeout_s=0.2)  # nobody there
        unanswered = RedisPrefixes(gone, RedisLayout(prefix), lambda: ["a"], NAMESPACE)
        assert await unanswered.lookup(PROMPT) == {"a": 0} and unanswered.errors == 1
        await gone.aclose()

    asyncio.run(scenario())


def test_registrations_come_and_go_with_their_heartbeats(redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    serving = {"n1": True}

    async def load_of_n1() -> NodeLoad | None:
        return NodeLoad(3, 1, 0.25) if serving["n1"] else None

    async def scenario() -> None:
        directory = NodeDirectory(redis_server.url(), prefix)
        n1 = NodeRegistration(redis_server.url(), "n1", "127.0.0.1:7001", load_of_n1, prefix,
                              heartbeat_s=0.1, ttl_s=0.5)
        n2 = NodeRegistration(redis_server.url(), "n2", "127.0.0.1:7002",
                              lambda: asyncio.sleep(0, NodeLoad()), prefix,
                              heartbeat_s=0.1, ttl_s=0.5)
        tasks = [asyncio.create_task(n1.run()), asyncio.create_task(n2.run())]

        async def ids() -> list[str]:
            return [entry.node_id for entry in await directory.nodes()]
        await eventually(ids, ["n1", "n2"])
        first = (await directory.nodes())[0]
        assert (first.address, first.epoch, first.load) == (
            "127.0.0.1:7001", n1.epoch, NodeLoad(3, 1, 0.25))
        serving["n1"] = False  # n1 stops beating: it lapses within the TTL
        await eventually(ids, ["n2"])
        serving["n1"] = True
        await eventually(ids, ["n1", "n2"])
        tasks[1].cancel()
        await n2.close()  # withdrawn at once, not at the TTL
        assert await ids() == ["n1"]
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await n1.close()
        await directory.close()

    asyncio.run(scenario())


async def eventually(read: Callable[[], Awaitable[object]], expected: object) -> None:
    """Until `read()` answers `expected` (entries are written in the background)."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while (found := await read()) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"{found} != {expected}"
        await asyncio.sleep(0.05)
