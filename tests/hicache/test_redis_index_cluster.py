"""The page index on a real three-node Redis Cluster (`--hicache-redis-cluster`): each node's
keys share one slot (its hash tag), so a lookup's MGETs and the removal script never cross
slots, and the index works there as on a single Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack

import pytest
from redis.cluster import RedisCluster

from radixmesh.services.hicache.page_index import RemoteRun
from tests.hicache.index_helpers import (
    entry_name,
    eventually,
    lookup_until,
    new_prefix,
    running_index,
)
from tests.hicache.redis_server import REDIS_BINARY, REDIS_CLI, RedisClusterServers
from tests.hicache.slots import CHAIN

pytestmark = pytest.mark.skipif(REDIS_BINARY is None or REDIS_CLI is None,
                                reason="redis-server and redis-cli are not installed "
                                "(apt-get install redis-server)")


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()


def test_the_index_works_on_a_redis_cluster(redis_cluster: RedisClusterServers) -> None:
    prefix = new_prefix()
    reader = RedisCluster.from_url(redis_cluster.url(), decode_responses=True)

    def exists(node_id: str, count: int) -> int:
        return sum(reader.exists(entry_name(prefix, node_id, key)) for key in CHAIN[:count])

    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            nodes = {node_id: await stack.enter_async_context(running_index(
                redis_cluster.url(), node_id, prefix, cluster=True))
                for node_id in ("node-a", "node-b", "node-c")}
            nodes["node-a"].held(CHAIN[:5])
            nodes["node-b"].held(CHAIN[:9])
            await lookup_until(nodes["node-c"], CHAIN[:12], RemoteRun(
                "node-b", "node-b.test:7000", nodes["node-b"].epoch, 9))
            await eventually(lambda: exists("node-a", 5) == 5, "a's entries")
            nodes["node-b"].gone(CHAIN[4:9])
            await lookup_until(nodes["node-c"], CHAIN[:12], RemoteRun(
                "node-a", "node-a.test:7000", nodes["node-a"].epoch, 5))
            assert exists("node-b", 9) == 4
            assert all(index.stats().errors == 0 for index in nodes.values())

    try:
        asyncio.run(scenario())
    finally:
        reader.close()
    # The nodes' keys lie in several slots of the cluster, each node's in one.
    slots = {node: {reader.keyslot(entry_name(prefix, node, key)) for key in CHAIN[:3]}
             for node in ("node-a", "node-b", "node-c")}
    assert all(len(found) == 1 for found in slots.values())
    assert len(set.union(*slots.values())) == 3
