"""What the router believes before it chooses, without processes: the nodes' page-key
namespace travels in their model info and is the scheduler's own; the estimate is per node the
best of the page index and the routed-where tree (whole pages, salts apart); a node's load is
its last beat plus what was sent since; fresh conversations spread; a balance choice that
leaves pages elsewhere in the index says so."""

from __future__ import annotations

import asyncio

import pytest

from radixmesh.services.router.node_link import NodeLink
from radixmesh.services.router.node_pool import Node
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.host_cache import build_host_cache
from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.shared import wire
from radixmesh.shared.mesh_info import ModelInfo
from radixmesh.shared.node_registry import NodeLoad
from radixmesh.shared.page_keys import KeyNamespace
from radixmesh.shared.prefix_oracle import BestOf, PrefixLookup, PrefixOracle, SentPrefixes
from radixmesh.shared.replica_choice import Choice, ChoiceRule, choose_replica, with_fetch
from radixmesh.shared.step import WorkerInfo
from radixmesh.shared.tracing import TracingFlags, start_tracing, stop_tracing

BOS = 1
NODES = ("a", "b", "c")


def worker_info(kv_dtype: str = "float32") -> WorkerInfo:
    return WorkerInfo(model_id="tiny-llama", num_pages=64, page_size=4, context_len=512,
                      vocab_size=256, eos_token_ids=(2,), kv_dtype=kv_dtype,
                      max_running_requests=8, weights_fingerprint="ab" * 32, tp_size=2)


class FixedIndex(PrefixOracle):
    """An exact oracle whose answers the test sets (the Redis one is tested against a real
    redis-server in test_redis_oracle_and_registry.py)."""

    def __init__(self, answers: dict[str, int]) -> None:
        self.answers = answers
        self.learned: list[tuple[int, KeyNamespace | None]] = []

    def matched(self, token_ids):  # type: ignore[no-untyped-def]
        return dict(self.answers)

    def record(self, replica, token_ids) -> None:  # type: ignore[no-untyped-def]
        raise AssertionError("the index is never told what was sent")

    def held_tokens(self, replica) -> int:  # type: ignore[no-untyped-def]
        return 0

    def learn(self, page_size: int, namespace: KeyNamespace | None) -> None:
        self.learned.append((page_size, namespace))


def test_the_model_info_names_the_pages_as_the_schedulers_hicache_does() -> None:
    worker = worker_info()
    info = ModelInfo.from_worker(worker)
    assert info.key_namespace == KeyNamespace("tiny-llama", "ab" * 32, "float32", 4, "tp2")
    # Over the wire (a node's GetModelInfo, as the router reads it), salt-free.
    assert wire.model_info_from_proto(wire.model_info_to_proto(info)) == info
    host_cache = build_host_cache(SchedulerConfig(enable_hierarchical_cache=True), worker,
                                  PageAllocator(worker.num_pages))
    assert host_cache is not None
    # The scheduler chains its keys from this root, a salted request's from the namespace
    # `with_salt` (both as the router's RedisPrefixes does); test_router_page_index.py finds
    # a real node's pages in Redis by these keys.
    assert info.key_namespace.root() == host_cache.key_root
    assert host_cache.cache.key_namespace == info.key_namespace
    # A worker that keeps no KV names no pages; a peer's malformed namespace reads as none.
    assert ModelInfo.from_worker(worker_info("none")).key_namespace is None
    message = wire.model_info_to_proto(info)
    message.key_namespace.page_size = 0
    assert wire.model_info_from_proto(message).key_namespace is None


def test_the_estimate_is_the_best_of_the_index_and_the_tree_per_node() -> None:
    index = FixedIndex({"a": 8, "b": 24, "c": 0})
    oracle = BestOf(SentPrefixes(NODES), index)
    namespace = ModelInfo.from_worker(worker_info()).key_namespace
    oracle.learn(4, namespace)
    prompt = [BOS, *range(10, 40)]
    oracle.record("a", prompt[:19])  # four whole pages and three tokens sent to a
    oracle.record("c", [BOS, 99, 98])  # shares the BOS alone: less than a page
    found = asyncio.run(oracle.lookup_both(prompt))
    assert found == PrefixLookup({"a": 16, "b": 24, "c": 0}, {"a": 8, "b": 24, "c": 0})
    assert found.fetchable == 24 and index.learned == [(4, namespace)]
    assert asyncio.run(oracle.lookup(prompt)) == found.held
    # Without an index: the tree alone, floored to whole pages.
    alone = BestOf(SentPrefixes(NODES))
    alone.learn(4, None)
    alone.record("b", prompt)
    assert asyncio.run(alone.lookup_both(prompt)) == PrefixLookup(
        {"a": 0, "b": 28, "c": 0}, {})


def test_a_salted_prompt_matches_only_its_own_salt_in_the_tree() -> None:
    oracle = BestOf(SentPrefixes(NODES))
    prompt = list(range(10, 30))
    oracle.record("a", prompt, cache_salt="tenant-1")
    oracle.record("b", prompt)

    def held(salt: str | None) -> dict:
        return asyncio.run(oracle.lookup(prompt, salt))
    assert held("tenant-1") == {"a": 20, "b": 0, "c": 0}
    assert held(None) == {"a": 0, "b": 20, "c": 0}
    assert held("tenant-2") == {"a": 0, "b": 0, "c": 0}


def test_two_fresh_conversations_go_to_different_idle_nodes() -> None:
    # Both open with the same BOS and chat-template tokens, far below the cache threshold:
    # that shared opening must not keep the second on the first's node.
    opening = [BOS, 50, 51, 52]
    oracle = SentPrefixes(NODES)
    idle = dict.fromkeys(NODES, 0)
    first = choose_replica([*opening, *range(100, 160)], idle, oracle)
    second = choose_replica([*opening, *range(200, 260)], idle, oracle)
    third = choose_replica([*opening, *range(300, 360)], idle, oracle)
    assert len({first.replica, second.replica, third.replica}) == 3
    assert {first.reason, second.reason, third.reason} == {"load"}
    # The first's next round still follows its history.
    again = choose_replica([*opening, *range(100, 170)], idle, oracle)
    assert (again.replica, again.reason) == (first.replica, "cache")


def test_a_nodes_load_is_its_last_beat_plus_what_was_sent_since() -> None:
    asyncio.run(_load_scenario())


async def _load_scenario() -> None:
    node = Node("a", NodeLink("127.0.0.1:1"), static=False)  # never dialled
    try:
        first = node.sent()  # no beat read yet: the router's own count alone
        assert node.busy == 1
        node.registered(NodeLoad(running=5, queued=3), first)  # the first is in the beat
        assert node.busy == 8  # other clients' requests count
        await asyncio.sleep(0.002)
        second, third = node.sent(), node.sent()
        assert node.busy == 10  # two more, sent since the beat
        node.done(second)  # finished before the next beat: no longer counted
        assert node.busy == 9
        node.registered(NodeLoad(running=7, queued=3), third)
        assert node.busy == 10  # the third is in this beat: not counted twice
        node.registered(NodeLoad(running=0), third + 1)
        assert node.busy == 2  # the beat says less than the router's own in flight
        node.done(first)
        node.done(third)
        assert node.busy == 0 and not node.sent_at
    finally:
        await node.link.close()


def test_a_balance_choice_that_leaves_indexed_pages_elsewhere_is_a_fetch() -> None:
    oracle = SentPrefixes(NODES)
    prompt = list(range(10, 74))
    oracle.record("a", prompt)
    rule = ChoiceRule(balance_abs=2, balance_rel=1.5)
    moved = choose_replica(prompt, {"a": 6, "b": 0, "c": 1}, oracle, rule)
    assert (moved.replica, moved.reason) == ("b", "balance")
    assert with_fetch(moved, fetchable=64) == Choice("b", 0, "balance_fetch")
    assert with_fetch(moved, fetchable=0) == moved  # no index, or nothing in it
    held = Choice("a", 64, "cache")
    assert with_fetch(held, fetchable=64) == held


@pytest.mark.parametrize(("sampler", "sampled"), [("always_off", False), ("always_on", True)])
def test_the_routers_front_door_samples_by_the_environment(
        monkeypatch: pytest.MonkeyPatch, sampler: str, sampled: bool) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    flags = TracingFlags(enable_trace=True, otlp_traces_endpoint="127.0.0.1:1")
    router, scheduler = start_tracing("router", flags), start_tracing("scheduler", flags)
    try:
        root = router.start("Generate")
        assert root.get_span_context().trace_flags.sampled is sampled
        root.end()
        # Downstream services never sample by the environment: a new root there is kept.
        inner = scheduler.start("queue")
        assert inner.get_span_context().trace_flags.sampled
        inner.end()
    finally:
        stop_tracing(router)
        stop_tracing(scheduler)
