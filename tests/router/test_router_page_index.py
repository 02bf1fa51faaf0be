"""The router's page keys are a real node's: a tiered mesh (model worker, hierarchical cache,
in a real Redis page index) serves a prompt; the namespace its GetModelInfo publishes, read as
the router reads it, makes the router's exact oracle find that prompt's pages on that node
(and through `BestOf`, the router's estimate, the same)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import pytest

from radixmesh.client import AsyncClient
from radixmesh.make_model import make_model
from radixmesh.services.router.node_link import NodeLink
from radixmesh.shared.mesh_info import ModelInfo
from radixmesh.shared.page_index_layout import RedisLayout
from radixmesh.shared.prefix_oracle import BestOf, SentPrefixes
from radixmesh.shared.redis_connect import connect
from radixmesh.shared.redis_prefixes import RedisPrefixes
from tests.hicache.mesh_runs import PAGE_SIZE, TieredMesh, complete, tiered_mesh, wait_idle
from tests.hicache.redis_server import REDIS_BINARY, RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(REDIS_BINARY is None, reason="redis-server is not installed "
                                 "(apt-get install redis-server)")]
PREFIX = "router-index:"
NODE = "node-a"
PROMPT_TOKENS = 48
# Every whole page of the prompt: the node caches the answer too, so even the last is full.
HELD = PROMPT_TOKENS // PAGE_SIZE * PAGE_SIZE
WAIT_S = 30.0


@pytest.fixture(scope="module")
def node(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[TieredMesh]:
    root = tmp_path_factory.mktemp("router-index")
    with tiered_mesh(make_model(root / "llama", "llama"), root / "l3", "--node-id", NODE,
                     "--hicache-redis-url", redis_server.url(), "--hicache-redis-key-prefix",
                     PREFIX, "--hicache-redis-timeout", "2") as mesh:
        yield mesh


def test_the_router_finds_a_nodes_pages_by_the_namespace_it_publishes(
        node: TieredMesh, redis_server: RedisServer) -> None:
    prompt = [random.Random(7).randrange(3, 200) for _ in range(PROMPT_TOKENS)]

    async def scenario() -> None:
        link = NodeLink(node.mesh.grpc_address)
        info: ModelInfo = await link.model_info()
        await link.close()
        assert info.key_namespace is not None and info.key_namespace.page_size == PAGE_SIZE
        client = connect(redis_server.url(), timeout_s=2.0)
        exact = RedisPrefixes(client, RedisLayout(PREFIX), lambda: [NODE], timeout_s=2.0)
        estimate = BestOf(SentPrefixes(()), exact)
        estimate.learn(info.page_size, info.key_namespace)  # as the router does
        assert await exact.lookup(prompt) == {NODE: 0}  # not served yet
        async with AsyncClient(node.mesh.grpc_address) as mesh_client:
            await complete(mesh_client, prompt)
        await asyncio.to_thread(wait_idle, node.mesh)
        deadline = time.monotonic() + WAIT_S
        while (found := await exact.lookup(prompt)) != {NODE: HELD}:
            assert time.monotonic() < deadline, f"the index shows {found} of {HELD} tokens"
            await asyncio.sleep(0.1)
        assert (await estimate.lookup_both(prompt)).held == {NODE: HELD}
        # Another salt's keys are other keys: none of them is in the index.
        assert await exact.lookup(prompt, cache_salt="someone-else") == {NODE: 0}
        await client.aclose()

    asyncio.run(scenario())

