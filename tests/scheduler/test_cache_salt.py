"""Cache salts (vLLM's `cache_salt`): one prefix-cache namespace per salt, in the radix tree,
the tiered tree's page keys and the scheduler's accounting."""

from __future__ import annotations

import random

import pytest

from radixmesh.services.scheduler.host_slots import HostSlots
from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.pending_prefixes import PendingPrefixes
from radixmesh.services.scheduler.prefix_cache import RadixCache
from radixmesh.services.scheduler.prefix_cache.hi_radix_cache import HiRadixCache
from radixmesh.services.scheduler.request import SchedReq
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.mesh_info import ModelInfo
from radixmesh.shared.page_keys import KeyNamespace, page_keys
from radixmesh.shared.request_checks import check_tokenized_request
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.text_checks import MAX_CACHE_SALT_LENGTH
from radixmesh.shared.wire import tokenized_request_from_proto, tokenized_request_to_proto
from tests.scheduler.driver import Driver, worker_info

SALTS = (None, "tenant-a", "tenant-b")
NAMESPACE = KeyNamespace("m", "w", "float32", 2, "tp1")


def insert(cache: RadixCache, tokens: list[int], salt: str | None) -> list[int]:
    """Inserts `tokens` as a finished request would; returns the pages the cache now holds."""
    pages = cache.allocator.alloc(len(tokens) // cache.page_size)
    assert pages is not None
    already = cache.insert(tokens, pages, salt) // cache.page_size
    cache.allocator.free(pages[:already])
    return list(cache.match_prefix(tokens, salt).page_ids)


def test_each_salt_caches_its_own_pages_and_one_salt_shares_them() -> None:
    cache = RadixCache(2, PageAllocator(64))
    tokens = list(range(10, 22))
    held = {salt: insert(cache, tokens, salt) for salt in SALTS}
    assert all(len(pages) == 6 for pages in held.values())
    assert len({page for pages in held.values() for page in pages}) == 18  # no page shared
    assert cache.num_cached_pages == 18
    for salt in SALTS:
        assert cache.match_prefix(tokens + [1, 1], salt).page_ids == tuple(held[salt])
    assert cache.match_prefix(tokens, "tenant-c").num_tokens == 0
    # The same salt again shares its pages: nothing new is cached.
    assert insert(cache, tokens[:8] + [7, 7], "tenant-a")[:4] == held["tenant-a"][:4]
    assert cache.num_cached_pages == 19
    cache.check_consistency()


def test_a_new_salts_root_is_kept_only_while_it_holds_or_protects_something() -> None:
    cache = RadixCache(1, PageAllocator(16))
    match = cache.match_prefix([1, 2, 3], "fresh")  # matching registers nothing
    assert len(cache._roots) == 1
    cache.lock(match.handle)  # a request admitted with nothing cached
    assert len(cache._roots) == 2
    insert(cache, [1, 2, 3], "fresh")  # its pages go under the same root
    cache.unlock(match.handle)
    cache.check_consistency()
    assert cache.evict(3) == 3
    assert len(cache._roots) == 1  # its last page gone: the salt leaves nothing behind
    cache.check_consistency()
    # An empty insert and a lock released at once leave nothing either.
    cache.insert([], [], "other")
    handle = cache.match_prefix([4], "other").handle
    cache.lock(handle)
    cache.unlock(handle)
    assert len(cache._roots) == 1
    cache.check_consistency()


def test_a_root_handle_stands_for_the_root_registered_meanwhile() -> None:
    cache = RadixCache(1, PageAllocator(16))
    early = cache.match_prefix([5, 6], "s").handle  # detached: nothing under "s" yet
    insert(cache, [5, 6], "s")  # registers a root of its own
    cache.lock(early)
    assert cache.num_evictable_pages == 2  # a root's lock protects no page
    cache.unlock(early)
    cache.check_consistency()
    with pytest.raises(ValueError, match="unlock without"):
        cache.unlock(early)


def test_random_operations_never_match_another_salts_pages() -> None:
    rng = random.Random(11)
    cache = RadixCache(2, PageAllocator(40))
    owner: dict[int, str | None] = {}  # page -> the salt it was inserted under
    locked: list[object] = []
    for _ in range(600):
        salt = rng.choice(SALTS)
        tokens = [rng.randrange(3) for _ in range(2 * rng.randrange(1, 6))]
        action = rng.random()
        if action < 0.45:
            cache.evict(max(0, len(tokens) // 2 - cache.allocator.num_free))
            if cache.allocator.num_free >= len(tokens) // 2:
                owner.update({page: salt for page in insert(cache, tokens, salt)})
        elif action < 0.75:
            match = cache.match_prefix(tokens, salt)
            assert all(owner[page] == salt for page in match.page_ids)
            cache.lock(match.handle)
            locked.append(match.handle)
        elif locked:
            cache.unlock(locked.pop(rng.randrange(len(locked))))
        else:
            cache.evict(rng.randrange(1, 5))
        cache.check_consistency()
    for handle in locked:
        cache.unlock(handle)
    cache.reset()
    cache.check_consistency()
    assert cache.allocator.num_free == 40 and len(cache._roots) == 1


def run_step(cache: HiRadixCache, step_id: int) -> None:
    cache.tier.take_copies(step_id)
    cache.tier.take_stores(step_id)
    cache.tier.storing.clear()


def test_salted_page_keys_chain_from_the_salted_namespace() -> None:
    """The key names a page in L2, L3, Redis and on peers: a salt's keys are its own."""
    cache = HiRadixCache(2, PageAllocator(32), HostSlots(32), key_namespace=NAMESPACE)
    tokens = [1, 2, 3, 4, 5, 6]
    for salt in SALTS:
        match = cache.match_prefix(tokens, salt)
        expected = page_keys(NAMESPACE.with_salt(salt).root(), tokens, 2)
        assert cache.keys_past(match, tokens) == expected
    insert(cache, tokens, "tenant-a")
    run_step(cache, 1)
    stored = set(cache.host.keys.values())  # the keys the hosted pages go to L3 under
    salted = page_keys(NAMESPACE.with_salt("tenant-a").root(), tokens, 2)
    assert set(salted) <= stored
    assert not set(page_keys(NAMESPACE.root(), tokens, 2)) & stored
    # Past the salted prefix, keys continue its chain.
    match = cache.match_prefix(tokens + [7, 8], "tenant-a")
    assert cache.keys_past(match, [7, 8]) == page_keys(
        NAMESPACE.with_salt("tenant-a").root(), tokens + [7, 8], 2)[3:]


def test_host_copies_and_prefetched_pages_stay_in_their_salt() -> None:
    cache = HiRadixCache(2, PageAllocator(8), HostSlots(32), key_namespace=NAMESPACE)
    tokens = [1, 2, 3, 4]
    insert(cache, tokens, "tenant-a")
    run_step(cache, 1)
    assert cache.evict(2) == 2  # the device copy goes; the host copy stays
    assert cache.match_prefix(tokens + [0, 0], "tenant-a").num_host_tokens == 4
    assert cache.match_prefix(tokens + [0, 0], None).num_host_tokens == 0
    assert cache.match_prefix(tokens + [0, 0], "tenant-b").num_host_tokens == 0
    # A prefetch for tenant-b lands under tenant-b's root only.
    keys = page_keys(NAMESPACE.with_salt("tenant-b").root(), tokens, 2)
    slots = cache.host.alloc(2, for_worker=False)
    assert cache.insert_prefetched(tokens, slots, keys, salt="tenant-b") == []
    assert cache.match_prefix(tokens + [0, 0], "tenant-b").num_host_tokens == 4
    assert cache.match_prefix(tokens + [0, 0], None).num_host_tokens == 0
    cache.check_consistency()
    cache.drop_host_tier(HostSlots(32))
    assert len(cache._roots) == 1  # both salts held host copies only
    cache.check_consistency()


def test_the_scheduler_keeps_salts_apart_and_pages_add_up() -> None:
    prompt = list(range(5, 45))
    driver = Driver(worker_info(num_pages=256, page_size=4))
    driver.add("first", prompt, max_new_tokens=2, cache_salt="tenant-a")
    driver.run()  # checks page accounting at the end of every run
    for rid, salt in (("other-salt", "tenant-b"), ("unsalted", None), ("same-salt", "tenant-a")):
        driver.add(rid, prompt, max_new_tokens=2, cache_salt=salt)
        run = driver.run()
        cached = run.usages[rid].cached_tokens
        assert cached == (36 if rid == "same-salt" else 0), (rid, cached)
    assert driver.scheduler.kv.cache.num_cached_pages == 3 * 10


def test_an_invalid_salt_is_refused_at_the_schedulers_entry() -> None:
    info = ModelInfo.from_worker(worker_info(num_pages=64))
    for salt, reason in (("", "non-empty"), ("x" * (MAX_CACHE_SALT_LENGTH + 1), "at most")):
        request = TokenizedRequest("r", (5, 6), SamplingParams(max_new_tokens=2),
                                   cache_salt=salt)
        with pytest.raises(InvalidRequestError, match=reason):
            check_tokenized_request(request, info)


def test_the_salt_survives_the_wire_and_no_salt_stays_none() -> None:
    for salt in (None, "tenant-a", "ünï"):
        request = TokenizedRequest("r", (5, 6), SamplingParams(max_new_tokens=2),
                                   cache_salt=salt)
        assert tokenized_request_from_proto(tokenized_request_to_proto(request)) == request


def test_a_request_waits_only_for_a_prefix_of_its_own_salt() -> None:
    """In-batch prefix sharing defers a request behind one computing its prefix: only when
    that one's pages will be shareable, of the same salt."""
    pending = PendingPrefixes(prefix_tokens=4)
    prompt = tuple(range(10, 20))
    pending.add(SchedReq("computing", prompt, SamplingParams(), 1, cache_salt="tenant-a"))
    for salt, deferred in (("tenant-a", True), ("tenant-b", False), (None, False)):
        req = SchedReq(f"next-{salt}", prompt, SamplingParams(), 2, cache_salt=salt)
        assert pending.should_defer(req, num_cached_tokens=0) is deferred
    pending.discard("computing")
    req = SchedReq("later", prompt, SamplingParams(), 3, cache_salt="tenant-a")
    assert not pending.should_defer(req, num_cached_tokens=0)
