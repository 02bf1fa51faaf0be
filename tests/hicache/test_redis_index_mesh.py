"""Two real meshes (`radixmesh up --node-id node-a` and `node-b`) sharing one real Redis: the
pages node A serves are in the index, and node B's hicache Lookup reports them as node A's; with
Redis killed mid-run both meshes go on serving exactly (greedy fp32), `/health` stays ready and
the errors are counted; once Redis is back (empty) the index fills again."""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import grpc
import pytest

from radixmesh.client import AsyncClient
from radixmesh.make_model import make_model
from radixmesh.shared.page_keys import page_keys
from radixmesh.shared.protos_gen import hicache_pb2, hicache_pb2_grpc
from tests.hicache.l3_files import namespace_root
from tests.hicache.mesh_runs import (
    PAGE_SIZE,
    TieredMesh,
    complete,
    samples,
    scrape,
    tiered_mesh,
    wait_idle,
)
from tests.hicache.redis_server import NEEDS_REDIS, RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              NEEDS_REDIS]
PROMPT_TOKENS = 48  # 12 pages of 4
REFILL_WAIT_S = 30.0
PREFIX = "mesh-test:"


@dataclass
class Nodes:
    a: TieredMesh
    b: TieredMesh
    redis: RedisServer


@pytest.fixture(scope="module")
def nodes(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    root = tmp_path_factory.mktemp("cross-node")
    model = make_model(root / "llama", "llama")
    with ExitStack() as stack:
        meshes = [stack.enter_context(tiered_mesh(
            model, root / f"l3-{node}", "--node-id", node, "--hicache-redis-url",
            redis_server.url(), "--hicache-redis-key-prefix", PREFIX,
            "--hicache-redis-timeout", "2", "--hicache-redis-ttl", "30"))
            for node in ("node-a", "node-b")]
        yield Nodes(*meshes, redis_server)


def prompts(seed: int, count: int = 3) -> list[list[int]]:
    draw = random.Random(seed)
    return [[draw.randrange(3, 200) for _ in range(PROMPT_TOKENS)] for _ in range(count)]


def serve(tiered: TieredMesh, batch: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Each prompt in turn, greedy; the outputs, once the mesh is idle again."""
    async def send() -> list[tuple[int, ...]]:
        async with AsyncClient(tiered.mesh.grpc_address) as client:
            return [(await complete(client, prompt)).output for prompt in batch]
    outputs = asyncio.run(send())
    wait_idle(tiered.mesh)
    return outputs


def remote_pages(b: TieredMesh, a: TieredMesh, prompt: Sequence[int]) -> tuple[int, str, str]:
    """What B's hicache Lookup says of `prompt`'s pages: (remote pages, node, its address)."""
    keys = page_keys(namespace_root(a.l3_dir), prompt, PAGE_SIZE)

    async def ask() -> hicache_pb2.LookupReply:
        async with grpc.aio.insecure_channel(b.mesh.internal["hicache"]) as channel:
            return await hicache_pb2_grpc.HiCacheStub(channel).Lookup(
                hicache_pb2.LookupRequest(keys=keys), timeout=10)
    reply = asyncio.run(ask())
    return reply.remote_num_pages, reply.remote_node_id, reply.remote_address


def wait_remote(nodes: Nodes, prompt: Sequence[int]) -> tuple[int, str, str]:
    """B's view of `prompt` once it sees all of its full pages on A (the index is written
    in the background)."""
    full = PROMPT_TOKENS // PAGE_SIZE
    deadline = time.monotonic() + REFILL_WAIT_S
    while True:
        seen = remote_pages(nodes.b, nodes.a, prompt)
        if seen[0] == full:
            return seen
        assert time.monotonic() < deadline, f"B sees {seen}, not {full} pages on node-a"
        time.sleep(0.1)


def health(tiered: TieredMesh) -> int:
    with urllib.request.urlopen(f"{tiered.mesh.http_url}/health", timeout=10) as reply:
        return reply.status


def test_b_sees_the_pages_a_served_as_remote(nodes: Nodes) -> None:
    batch = prompts(1)
    serve(nodes.a, batch)
    for prompt in batch:
        assert wait_remote(nodes, prompt) == (PROMPT_TOKENS // PAGE_SIZE, "node-a",
                                              nodes.a.mesh.internal["hicache"])
    a_metrics = samples(scrape(nodes.a.hicache_metrics_url))
    assert a_metrics["radixmesh:hicache_index_entries_written_total"] >= len(batch) * 12
    assert a_metrics["radixmesh:hicache_index_connected"] == 1


def test_serving_goes_on_exactly_without_redis_and_the_index_refills(nodes: Nodes) -> None:
    before, during = prompts(2), prompts(3)
    expected = serve(nodes.a, before)
    errors = samples(scrape(nodes.b.hicache_metrics_url))["radixmesh:hicache_index_errors_total"]
    nodes.redis.kill()
    try:
        # The same prompts again (served from A's caches) and new ones, on both nodes.
        assert serve(nodes.a, before) == expected
        assert serve(nodes.a, during) == serve(nodes.b, during)
        assert health(nodes.a) == health(nodes.b) == 200
        after = samples(scrape(nodes.b.hicache_metrics_url))
        assert after["radixmesh:hicache_index_errors_total"] > errors
    finally:
        nodes.redis.start()  # empty, on the same port
    # A re-publishes what it holds, the pages served while Redis was down included (B holds
    # those itself, so its Lookup does not look further: A's entries are read directly).
    for prompt in before:
        wait_remote(nodes, prompt)
    redis = nodes.redis.client()
    for prompt in during:
        keys = page_keys(namespace_root(nodes.a.l3_dir), prompt, PAGE_SIZE)
        assert redis.exists(*(f"{PREFIX}{{node-a}}:p:{key.hex()}" for key in keys)) == len(keys)
    assert serve(nodes.b, before) == expected
