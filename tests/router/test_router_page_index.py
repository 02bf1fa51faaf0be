"""The router over two real tiered nodes (model worker, hierarchical cache, one real Redis that
holds both the page index and the node registry), started once for the module:

- the router's page keys are a real node's: the namespace node A's GetModelInfo publishes,
  read as the router reads it, makes the exact oracle find a prompt A served on A (and through
  `BestOf`, the router's estimate, the same);
- "balance_fetch": with A, the holder of a prompt, busier than B past the balance thresholds,
  the router sends that prompt to B, counts the decision, and B fetches A's pages (usage and
  B's `remote` tier count them) and answers exactly what A answered (greedy, fp32).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from radixmesh.client import AsyncClient
from radixmesh.services.router.node_link import NodeLink
from radixmesh.shared.mesh_info import ModelInfo
from radixmesh.shared.page_index_layout import RedisLayout
from radixmesh.shared.prefix_oracle import BestOf, SentPrefixes
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, generate_pb2_grpc
from radixmesh.shared.redis_connect import connect
from radixmesh.shared.redis_prefixes import RedisPrefixes
from tests.hicache.mesh_runs import (
    PAGE_SIZE,
    TIERED_FLAGS,
    TieredMesh,
    complete,
    samples,
    scrape,
    tier_totals,
    wait_idle,
)
from tests.hicache.redis_server import NEEDS_REDIS, RedisServer
from tests.mesh.conftest import free_port, spawn_mesh, stop_process, wait_mesh_up
from tests.router.conftest import Router, node_flags, start_router

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              NEEDS_REDIS]
PREFIX = "router-index:"
NODE, OTHER = "node-a", "node-b"
PROMPT_TOKENS = 48
# Every whole page of the prompt: the node caches the answer too, so even the last is full.
HELD = PROMPT_TOKENS // PAGE_SIZE * PAGE_SIZE
# What B fetches of a prompt A holds: its whole pages but the one with the last token, which
# a node always computes (it needs that token's logits).
FETCHED = (PROMPT_TOKENS - 1) // PAGE_SIZE * PAGE_SIZE
WAIT_S = 30.0
# A device pool with room for a long request beside the others (TIERED_FLAGS' 300 tokens
# would end it early). Fetch forced: on CPU the tiny model recomputes faster than it fetches,
# so the scheduler's own estimate would recompute, and this is about the router's decision.
NODE_FLAGS = (*TIERED_FLAGS, "--max-total-tokens", "2048", "--hicache-remote-policy", "fetch",
              "--hicache-redis-key-prefix", PREFIX, "--hicache-redis-timeout", "2")
# Any load apart tips the balance (busiest - idlest > 0 and > 1x); the index lookup is given
# the time a busy CPU machine may need.
BALANCE_FLAGS = ("--balance-abs-threshold", "0", "--balance-rel-threshold", "1",
                 "--page-index-key-prefix", PREFIX, "--page-index-timeout", "2")
BUSY_TOKENS = 1900  # the request that keeps A busy: far longer than the test needs it


@dataclass
class IndexedNodes:
    a: TieredMesh
    b: TieredMesh
    router: Router


@pytest.fixture(scope="module")
def nodes(mesh_model_path: Path, redis_server: RedisServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[IndexedNodes]:
    root, url = tmp_path_factory.mktemp("router-index"), redis_server.url()
    started: dict[str, TieredMesh] = {}
    try:
        for node_id in (NODE, OTHER):  # both start at once, then both are waited for
            port = free_port()
            mesh = spawn_mesh(mesh_model_path, *NODE_FLAGS, "--hicache-storage-dir",
                              str(root / node_id), "--hicache-metrics-port", str(port),
                              "--hicache-redis-url", url, *node_flags(node_id, url),
                              worker="model")
            started[node_id] = TieredMesh(mesh, f"http://127.0.0.1:{port}/metrics",
                                          root / node_id)
        for tiered in started.values():
            wait_mesh_up(tiered.mesh)
        with start_router(mesh_model_path, "--redis-url", url, *BALANCE_FLAGS) as router:
            router.wait_nodes({NODE, OTHER})
            yield IndexedNodes(started[NODE], started[OTHER], router)
        for node_id, tiered in started.items():
            assert tiered.mesh.process.poll() is None, f"{node_id} ended: {tiered.mesh.output}"
    finally:
        for tiered in started.values():
            stop_process(tiered.mesh.process)


@pytest.fixture(scope="module")
def node(nodes: IndexedNodes) -> TieredMesh:
    return nodes.a


def a_prompt(seed: int) -> list[int]:
    return [random.Random(seed).randrange(3, 200) for _ in range(PROMPT_TOKENS)]


def test_the_router_finds_a_nodes_pages_by_the_namespace_it_publishes(
        node: TieredMesh, redis_server: RedisServer) -> None:
    prompt = a_prompt(7)

    async def scenario() -> None:
        info = await model_info(node)
        assert info.key_namespace is not None and info.key_namespace.page_size == PAGE_SIZE
        client = connect(redis_server.url(), timeout_s=2.0)
        exact = RedisPrefixes(client, RedisLayout(PREFIX), lambda: [NODE], timeout_s=2.0)
        estimate = BestOf(SentPrefixes(()), exact)
        estimate.learn(info.page_size, info.key_namespace)  # as the router does
        assert await exact.lookup(prompt) == {NODE: 0}  # not served yet
        async with AsyncClient(node.mesh.grpc_address) as mesh_client:
            await complete(mesh_client, prompt)
        await asyncio.to_thread(wait_idle, node.mesh)
        await wait_indexed(exact, prompt)
        assert (await estimate.lookup_both(prompt)).held == {NODE: HELD}
        # Another salt's keys are other keys: none of them is in the index.
        assert await exact.lookup(prompt, cache_salt="someone-else") == {NODE: 0}
        await client.aclose()

    asyncio.run(scenario())


async def model_info(node: TieredMesh) -> ModelInfo:
    """The node's model info, as the router reads it."""
    link = NodeLink(node.mesh.grpc_address)
    try:
        return await link.model_info()
    finally:
        await link.close()


async def wait_indexed(exact: RedisPrefixes, prompt: Sequence[int]) -> None:
    """Until the index shows every whole page of `prompt` on node A (written in the
    background once A is idle)."""
    deadline = time.monotonic() + WAIT_S
    while (found := await exact.lookup(prompt)) != {NODE: HELD}:
        assert time.monotonic() < deadline, f"the index shows {found} of {HELD} tokens"
        await asyncio.sleep(0.1)


def test_a_busy_holder_hands_its_prompt_to_a_node_that_fetches_its_pages(
        nodes: IndexedNodes, redis_server: RedisServer) -> None:
    prompt, router = a_prompt(8), nodes.router
    expected = served_by_a(nodes, redis_server, prompt)
    wait_router_sees_idle(router)
    before = decisions(router), tier_totals(nodes.b.mesh)["remote"]
    with grpc.insecure_channel(router.grpc_address) as channel:
        stub = generate_pb2_grpc.GenerationStub(channel)
        # Most of this prompt is on A (its cache): the router sends it there, and it runs on.
        busy = stub.Generate(request([*prompt, 5, 6, 7, 8], BUSY_TOKENS), timeout=120)
        next(busy)
        assert router.nodes()[NODE]["in_flight"] == 1
        try:
            replies = list(stub.Generate(request(prompt, len(expected)), timeout=60))
        finally:
            busy.cancel()
    after = decisions(router)
    assert after.get("cache", 0) == before[0].get("cache", 0) + 1  # the busy one, to A
    assert after.get("balance_fetch", 0) == before[0].get("balance_fetch", 0) + 1
    assert router.nodes()[OTHER]["requests"] == 1  # B's only request: this one
    assert [token for reply in replies for token in reply.token_ids] == list(expected)
    assert replies[-1].usage.cached_tokens == FETCHED  # every page but the last, from A
    wait_idle(nodes.b.mesh)
    assert tier_totals(nodes.b.mesh)["remote"] == before[1] + FETCHED
    fetched = samples(scrape(nodes.b.hicache_metrics_url))
    assert fetched["radixmesh:hicache_fetched_tokens_total"] >= FETCHED


def request(prompt: Sequence[int], max_new_tokens: int) -> generate_pb2.GenerateRequest:
    return generate_pb2.GenerateRequest(
        input_ids=generate_pb2.TokenIds(ids=prompt), sampling=common_pb2.SamplingParams(
            max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True))


def served_by_a(nodes: IndexedNodes, redis_server: RedisServer,
                prompt: Sequence[int]) -> tuple[int, ...]:
    """A computes `prompt` (its answer is the one due from any node), and the index shows it."""
    async def scenario() -> tuple[int, ...]:
        async with AsyncClient(nodes.a.mesh.grpc_address) as direct:
            turn = await complete(direct, prompt)
        assert turn.cached_tokens == 0
        await asyncio.to_thread(wait_idle, nodes.a.mesh)
        info = await model_info(nodes.a)
        client = connect(redis_server.url(), timeout_s=2.0)
        exact = RedisPrefixes(client, RedisLayout(PREFIX), lambda: [NODE], timeout_s=2.0)
        exact.learn(info.page_size, info.key_namespace)
        try:
            await wait_indexed(exact, prompt)
        finally:
            await client.aclose()
        return turn.output

    return asyncio.run(scenario())


def wait_router_sees_idle(router: Router) -> None:
    """Until the router knows both nodes idle (their beats came after A's last request)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        loads = {node_id: node["load"]["running"] + node["load"]["queued"] + node["in_flight"]
                 for node_id, node in router.nodes().items()}
        if loads == {NODE: 0, OTHER: 0}:
            return
        assert time.monotonic() < deadline, f"the router sees loads {loads}"
        time.sleep(0.05)


def decisions(router: Router) -> dict[str, float]:
    """`radixmesh:router_decisions_total` by reason, from the router's /metrics."""
    text = scrape(f"{router.http_url}/metrics")
    return {sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == "radixmesh:router_decisions_total"}
