"""Two hicache services (node-a, node-b) sharing one real Redis, on real gRPC servers: B's
Lookup reports the pages A stored as remote, past what B's own L3 holds, and B's /metrics
counts its index lookups."""

from __future__ import annotations

import asyncio
from pathlib import Path

from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.shared.host_pool import HostPool
from radixmesh.shared.protos_gen import hicache_pb2, hicache_pb2_grpc
from tests.hicache.index_helpers import WAIT_S, new_prefix
from tests.hicache.mesh_runs import samples
from tests.hicache.redis_server import NEEDS_REDIS, RedisServer
from tests.hicache.slots import CHAIN, LAYOUT, slot_payload
from tests.hicache.test_server import attach_request, free_port, running, scrape, transfer

pytestmark = NEEDS_REDIS


def node_config(node_id: str, redis_url: str, prefix: str, directory: Path,
                metrics_port: int = 0) -> HiCacheConfig:
    return HiCacheConfig(port=free_port(), metrics_port=metrics_port, node_id=node_id,
                         hicache_storage_backend="file", hicache_storage_size=0.01,
                         hicache_storage_dir=str(directory / node_id),
                         hicache_redis_url=redis_url, hicache_redis_key_prefix=prefix,
                         hicache_redis_timeout=2.0, hicache_redis_ttl=30)


async def store(stub: hicache_pb2_grpc.HiCacheStub, first: int, count: int) -> None:
    """Pages first..first+count-1 into slots 1..count, then to L3."""
    reply = await stub.Attach(attach_request())
    slots = list(range(1, count + 1))
    with HostPool.attach(reply.pool_name, LAYOUT.host_pool_layout(reply.num_slots + 1)) as pool:
        for offset, slot in enumerate(slots):
            pool.write_slot(slot, slot_payload(first + offset))
    assert (await stub.Store(transfer(reply.epoch, first, slots))).num_pages == count


async def lookup_until(stub: hicache_pb2_grpc.HiCacheStub, count: int,
                       remote: int) -> hicache_pb2.LookupReply:
    """B's answer for the first `count` pages, once it reports `remote` pages elsewhere."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        reply = await stub.Lookup(hicache_pb2.LookupRequest(keys=CHAIN[:count]))
        if reply.remote_num_pages == remote:
            return reply
        assert asyncio.get_running_loop().time() < deadline, reply
        await asyncio.sleep(0.05)


def test_b_sees_as_remote_what_a_stored(redis_server: RedisServer, tmp_path: Path) -> None:
    prefix, metrics_port = new_prefix(), free_port()
    node_a = node_config("node-a", redis_server.url(), prefix, tmp_path)
    node_b = node_config("node-b", redis_server.url(), prefix, tmp_path, metrics_port)

    async def scenario() -> dict[str, float]:
        async with running(node_a) as a, running(node_b) as b:
            await store(a, 0, 3)
            reply = await lookup_until(b, 5, 3)
            assert (reply.num_pages, reply.remote_node_id, reply.remote_address) == (
                0, "node-a", f"127.0.0.1:{node_a.port}")
            assert len(reply.remote_epoch) == 32
            # B's own L3 holds page 0: A's run is counted from page 1 on.
            await store(b, 0, 1)
            reply = await lookup_until(b, 5, 2)
            assert (reply.num_pages, reply.remote_node_id) == (1, "node-a")
            # A asks about its own pages: L3 has them; B holds no further one.
            reply = await a.Lookup(hicache_pb2.LookupRequest(keys=CHAIN[:5]))
            assert (reply.num_pages, reply.remote_num_pages, reply.remote_node_id) == (3, 0, "")
            return samples(scrape(metrics_port))

    metrics = asyncio.run(scenario())
    assert metrics["radixmesh:hicache_index_lookups_total"] >= 2
    assert metrics["radixmesh:hicache_index_remote_hit_pages_total"] >= 5
    assert metrics["radixmesh:hicache_index_entries_written_total"] >= 1
    assert metrics["radixmesh:hicache_index_errors_total"] == 0
    assert metrics["radixmesh:hicache_index_connected"] == 1
    assert metrics["radixmesh:hicache_index_pages"] == 1
