"""The cross-node page index against a real redis-server (issue 20, slice A): entries per
(page, node) written after the L3 write and removed with the page, with node and epoch and a
TTL; removal by the owner's epoch only; a restarted or dead node ignored; one MGET per other
node per lookup; credentials; a Redis that dies and comes back empty."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from radixmesh.services.hicache.cache import HiCache
from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.services.hicache.page_index import (
    NO_RUN,
    IndexStartError,
    RedisPageIndex,
    RemoteRun,
)
from radixmesh.services.hicache.storage.page_file import HEADER_BYTES
from tests.hicache.index_helpers import (
    TTL_S,
    entry_name,
    eval_calls,
    eventually,
    lookup_until,
    new_prefix,
    running_index,
)
from tests.hicache.redis_server import NEEDS_REDIS, RedisServer
from tests.hicache.slots import CHAIN, LAYOUT, NAMESPACE_ROOT, SLOT_BYTES, mapped, slot_payload

pytestmark = NEEDS_REDIS


def store_pages(cache: HiCache, first: int, count: int) -> None:
    attachment = cache.attach(LAYOUT, 8, NAMESPACE_ROOT)
    slots = list(range(1, count + 1))
    with mapped(attachment) as pool:
        for offset, slot in enumerate(slots):
            pool.write_slot(slot, slot_payload(first + offset))
    assert cache.store(attachment.epoch, CHAIN[first:first + count], slots) == count


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


# ---- entries follow the node's L3 pages ---------------------------------------------------


def test_entries_follow_the_l3_pages_with_node_epoch_and_ttl(redis_server: RedisServer,
                                                              tmp_path: Path) -> None:
    prefix, redis = new_prefix(), redis_server.client()
    # L3 holds two pages and a half: a third page stored evicts the first.
    cap_gb = 2.5 * (HEADER_BYTES + SLOT_BYTES) / 1e9
    config = HiCacheConfig(hicache_storage_backend="file", hicache_storage_size=cap_gb,
                           hicache_storage_dir=str(tmp_path / "l3"))

    async def scenario() -> None:
        async with running_index(redis_server.url(), "node-a", prefix) as index:
            cache = HiCache(config, index)
            try:
                store_pages(cache, 0, 2)
                names = [entry_name(prefix, "node-a", key) for key in CHAIN[:3]]
                await eventually(lambda: redis.exists(*names[:2]) == 2, "two entries")
                value = f"{index.epoch} storage node-a.test:7000"
                assert redis.mget(names[:2]) == [value, value]
                assert 0 < redis.ttl(names[0]) <= TTL_S
                heartbeat = redis.get(f"{prefix}{{node-a}}:hb")
                assert heartbeat == f"{index.epoch} node-a.test:7000"
                store_pages(cache, 2, 1)  # evicts page 0: its entry goes with it
                await eventually(lambda: redis.exists(names[0]) == 0, "the evicted page's "
                                 "entry removed")
                assert redis.exists(*names[1:]) == 2
                cache.clear()
                await eventually(lambda: redis.exists(*names) == 0, "entries of a cleared L3")
                stats = index.stats()
                assert (stats.entries_removed, stats.held_pages, stats.connected) == (3, 0, True)
                assert stats.entries_written >= 3 and stats.errors == 0
            finally:
                cache.close()

    run(scenario)


def test_entries_are_refreshed_while_held_and_expire_once_not(redis_server: RedisServer) -> None:
    prefix, redis = new_prefix(), redis_server.client()
    name = entry_name(prefix, "node-a", CHAIN[0])

    async def scenario() -> None:
        async with running_index(redis_server.url(), "node-a", prefix) as index:
            index.held(CHAIN[:1])
            await eventually(lambda: redis.exists(name), "the entry")
            # Each refresh (every third of the TTL) writes the entry again with a whole TTL.
            written = index.stats().entries_written
            await eventually(lambda: index.stats().entries_written > written + 1, "refreshes")
            assert redis.exists(name)
        # The node is gone (as if dead: nothing removes the entries): the TTL does.
        assert redis.exists(name) and redis.exists(f"{prefix}{{node-a}}:hb") == 0
        await eventually(lambda: not redis.exists(name), "the entry expired")

    run(scenario)


# ---- whose entries count --------------------------------------------------------------------


def test_only_the_owner_in_its_epoch_removes_an_entry(redis_server: RedisServer) -> None:
    prefix, redis, url = new_prefix(), redis_server.client(), redis_server.url()
    name_a, name_b = (entry_name(prefix, node, CHAIN[0]) for node in ("node-a", "node-b"))

    async def scenario() -> None:
        async with running_index(url, "node-a", prefix) as old_a:
            old_a.held(CHAIN[:1])
            await eventually(lambda: redis.exists(name_a), "old a's entry")
            # node-a restarted (a new epoch) while its old process lingers.
            async with running_index(url, "node-a", prefix) as new_a, \
                    running_index(url, "node-b", prefix) as node_b:
                new_a.held(CHAIN[:1])
                node_b.held(CHAIN[:1])
                await eventually(lambda: redis.get(name_a) == f"{new_a.epoch} storage "
                                 "node-a.test:7000", "new a's entry")
                await eventually(lambda: redis.exists(name_b), "b's entry")
                evals = eval_calls(redis)
                old_a.gone(CHAIN[:1])  # another epoch's entry: not old a's to remove
                await eventually(lambda: eval_calls(redis) > evals, "old a's removal script")
                assert redis.get(name_a).startswith(new_a.epoch)
                assert old_a.stats().entries_removed == 0
                new_a.gone(CHAIN[:1])
                await eventually(lambda: not redis.exists(name_a), "new a's removal")
                assert redis.exists(name_b)  # b's entry of the same page stays
                assert new_a.stats().entries_removed == 1

    run(scenario)


def test_a_restarted_or_dead_node_is_not_reported(redis_server: RedisServer) -> None:
    prefix, redis, url = new_prefix(), redis_server.client(), redis_server.url()

    async def scenario() -> None:
        async with running_index(url, "node-b", prefix) as node_b:
            async with running_index(url, "node-a", prefix) as first_a:
                first_a.held(CHAIN[:4])
                await lookup_until(node_b, CHAIN[:6], RemoteRun(
                    "node-a", "node-a.test:7000", first_a.epoch, 4))
            # Stopped: its heartbeat went, its entries stay until their TTL but count no more.
            assert redis.exists(entry_name(prefix, "node-a", CHAIN[0]))
            assert await node_b.lookup(CHAIN[:6]) == NO_RUN
            async with running_index(url, "node-a", prefix) as second_a:
                await eventually(lambda: redis.exists(f"{prefix}{{node-a}}:hb"), "a's beat")
                # The old epoch's entries are still there, and ignored.
                assert redis.exists(entry_name(prefix, "node-a", CHAIN[0]))
                assert await node_b.lookup(CHAIN[:6]) == NO_RUN
                second_a.held(CHAIN[:2])
                await lookup_until(node_b, CHAIN[:6], RemoteRun(
                    "node-a", "node-a.test:7000", second_a.epoch, 2))

    run(scenario)


def test_a_lookup_is_one_mget_per_other_node(redis_server: RedisServer) -> None:
    prefix, redis, url = new_prefix(), redis_server.client(), redis_server.url()

    def calls(command: str) -> int:
        return redis.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)

    async def scenario() -> None:
        async with running_index(url, "node-a", prefix) as node_a, \
                running_index(url, "node-b", prefix) as node_b, \
                running_index(url, "node-c", prefix) as node_c:
            node_a.held(CHAIN[:5])
            node_b.held(CHAIN[:9])
            await lookup_until(node_c, CHAIN[:12], RemoteRun(
                "node-b", "node-b.test:7000", node_b.epoch, 9))
            mgets, gets = calls("mget"), calls("get")
            lookups = node_c.stats().lookups
            run = await node_c.lookup(CHAIN[:12])
            # 12 pages on two other nodes: two commands (the heartbeat rides in each MGET),
            # sent as one pipeline, not 24 or 26 commands.
            assert (calls("mget") - mgets, calls("get") - gets) == (2, 0)
            assert run.num_pages == 9 and node_c.stats().lookups == lookups + 1
            await lookup_until(node_a, CHAIN[:12], RemoteRun(  # its own pages are not "remote"
                "node-b", "node-b.test:7000", node_b.epoch, 9))

    run(scenario)


# ---- credentials -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("locked-redis"), password="s3cret-pass")
    server.start()
    yield server
    server.kill()


def test_the_urls_credentials_are_used(locked_redis: RedisServer) -> None:
    prefix, redis = new_prefix(), locked_redis.client()

    async def scenario() -> None:
        async with running_index(locked_redis.url(), "node-a", prefix) as index:
            index.held(CHAIN[:1])
            await eventually(lambda: redis.exists(entry_name(prefix, "node-a", CHAIN[0])),
                             "an entry written with the URL's password")
            assert index.stats().errors == 0

    run(scenario)


@pytest.mark.parametrize("password", ["wrong-pass", ""])
def test_refused_credentials_fail_the_start_clearly(locked_redis: RedisServer,
                                                    password: str) -> None:
    async def scenario() -> None:
        index = RedisPageIndex(locked_redis.url(password), "node-a", new_prefix(), 1.0, TTL_S)
        try:
            with pytest.raises(IndexStartError, match="Redis refused the credentials") as error:
                await index.start("127.0.0.1:1")
        finally:
            await index.close()
        assert "wrong-pass" not in str(error.value)  # the URL is shown without its password

    run(scenario)


def test_the_service_does_not_start_with_a_wrong_password(locked_redis: RedisServer,
                                                          tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-P", "-m", "radixmesh.serve", "hicache", "--port", "0",
         "--hicache-storage-backend", "file", "--hicache-storage-dir", str(tmp_path),
         "--hicache-redis-url", locked_redis.url("wrong-pass")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert child.returncode == 1
    assert "Redis refused the credentials" in child.stderr
    assert "wrong-pass" not in child.stderr


@pytest.mark.parametrize(("flags", "message"), [
    ({"hicache_redis_url": "http://127.0.0.1:1"}, "must start with redis:// or rediss://"),
    ({"hicache_redis_url": "redis://127.0.0.1:1", "hicache_storage_backend": None},
     "needs --hicache-storage-backend"),
    ({"node_id": "a{b}"}, "--node-id must not contain"),
    ({"hicache_redis_key_prefix": "x y"}, "--hicache-redis-key-prefix must not contain"),
    ({"hicache_redis_timeout": 0.0}, "--hicache-redis-timeout must be > 0"),
    ({"hicache_redis_ttl": 1}, "--hicache-redis-ttl must be >= 3"),
])
def test_bad_index_flags_are_refused_by_name(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HiCacheConfig(**{"hicache_storage_backend": "file", **flags})  # type: ignore[arg-type]


def test_the_default_node_id_is_the_host_name() -> None:
    assert HiCacheConfig().node_id == socket.gethostname()
    assert "secret" not in repr(HiCacheConfig(hicache_storage_backend="file",
                                              hicache_redis_url="redis://:secret@h:1"))


# ---- Redis dies and comes back -----------------------------------------------------------


def test_a_redis_that_dies_is_a_miss_and_the_index_refills_after(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()

    async def scenario() -> None:
        prefix = new_prefix()
        async with running_index(server.url(), "node-a", prefix) as node_a, \
                running_index(server.url(), "node-b", prefix) as node_b:
            node_a.held(CHAIN[:3])
            expected = RemoteRun("node-a", "node-a.test:7000", node_a.epoch, 3)
            await lookup_until(node_b, CHAIN[:3], expected)
            server.kill()
            assert await node_b.lookup(CHAIN[:3]) == NO_RUN  # a miss, not an error
            await eventually(lambda: not node_a.stats().connected, "a sees Redis gone")
            assert node_b.stats().errors > 0 and node_a.stats().errors > 0
            node_a.held(CHAIN[3:4])  # held while Redis is down: published once it is back
            server.start()  # the same port, empty
            await lookup_until(node_b, CHAIN[:5], RemoteRun(
                "node-a", "node-a.test:7000", node_a.epoch, 4))
            assert node_a.stats().connected

    try:
        run(scenario)
    finally:
        server.kill()
