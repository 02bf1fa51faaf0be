"""HiRadixCache: the radix tree over device pages and host slots (metadata only)."""

from __future__ import annotations

import random

import pytest

from radixmesh.services.scheduler.host_slots import HostSlots
from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.prefix_cache.hi_radix_cache import HiRadixCache
from radixmesh.shared.page_keys import KeyNamespace, page_keys

NAMESPACE = KeyNamespace("m", "w", "float32", 2, "tp1")
ROOT_KEY = NAMESPACE.root()


def make_cache(num_pages: int = 16, num_slots: int = 32, page_size: int = 2,
               policy: str = "write_through") -> HiRadixCache:
    return HiRadixCache(page_size, PageAllocator(num_pages), HostSlots(num_slots), policy,
                        key_namespace=NAMESPACE)


def insert(cache: HiRadixCache, tokens: list[int], salt: str | None = None) -> list[int]:
    """Inserts `tokens` as a finished request would: its own pages for what is not cached."""
    pages = cache.allocator.alloc(len(tokens) // cache.page_size)
    assert pages is not None
    already = cache.insert(tokens, pages, salt) // cache.page_size
    cache.allocator.free(pages[:already])
    return pages


def run_step(cache: HiRadixCache, step_id: int):
    """The plan of `step_id` goes out and its result comes back at once."""
    copies = cache.tier.take_copies(step_id)
    cache.tier.take_stores(step_id)
    cache.tier.storing.clear()
    return copies


def test_write_through_backs_up_new_pages_on_the_next_plan() -> None:
    cache = make_cache()
    pages = insert(cache, [1, 2, 3, 4, 5, 6])
    loads, backups = cache.tier.take_copies(step_id=7)
    assert not loads
    assert backups.device_pages == tuple(pages) and len(set(backups.host_slots)) == 3
    assert not cache.host.is_valid(list(backups.host_slots))  # not until the worker says so
    assert [slot for _, slot in cache.tier.take_stores(7)] == list(backups.host_slots)
    assert cache.host.is_valid(list(backups.host_slots))
    cache.check_consistency()


def test_evicted_device_copy_is_matched_in_host_memory_and_loaded_back() -> None:
    cache = make_cache()
    tokens = [1, 2, 3, 4, 5, 6]
    insert(cache, tokens)
    run_step(cache, 1)
    assert cache.evict(3) == 3 and cache.num_cached_pages == 0
    match = cache.match_prefix(tokens + [9])
    assert (match.num_tokens, match.num_host_tokens) == (0, 6)
    new_pages = cache.allocator.alloc(3)
    handle, from_storage, _ = cache.load(match, new_pages)
    loads, _ = cache.tier.take_copies(2)
    assert loads.device_pages == tuple(new_pages) and from_storage == 0
    cache.lock(handle)
    again = cache.match_prefix(tokens)
    assert (again.page_ids, again.num_host_tokens) == (tuple(new_pages), 0)
    cache.check_consistency()
    cache.unlock(handle)


def test_a_backup_not_yet_acknowledged_is_not_matchable_in_host_memory() -> None:
    cache = make_cache()
    insert(cache, [1, 2, 3, 4])
    cache.tier.take_copies(1)  # sent, no result yet
    cache.evict(2)  # the device copy goes; the host copy is still landing
    assert cache.match_prefix([1, 2, 3, 4, 5]).num_host_tokens == 0
    cache.tier.take_stores(1)
    assert cache.match_prefix([1, 2, 3, 4, 5]).num_host_tokens == 4
    cache.check_consistency()


def test_host_eviction_frees_least_recently_used_host_only_leaves() -> None:
    cache = make_cache(num_slots=3)
    insert(cache, [1, 2, 3, 4])
    run_step(cache, 1)
    cache.evict(2)
    insert(cache, [7, 8, 9, 10])  # needs 2 slots: evicts the host-only [1..4]
    run_step(cache, 2)
    assert cache.match_prefix([1, 2, 3, 4, 5]).num_host_tokens == 0
    assert cache.host.num_free + cache.host.num_quarantined == 1
    assert cache.match_prefix([7, 8, 9, 10, 0]).num_tokens == 4  # backed up and on device
    cache.evict(2)
    assert cache.match_prefix([7, 8, 9, 10, 0]).num_host_tokens == 4
    cache.check_consistency()


def test_freed_slots_wait_for_the_plans_in_flight_before_a_prefetch_takes_them() -> None:
    host = HostSlots(2)
    slots = host.alloc(2)
    host.plan_backup(slots, step_id=3)
    host.free(slots, after_step=5)
    assert host.num_free == 0 and host.num_quarantined == 2
    host.acknowledge(4)
    assert host.alloc(1, for_worker=False) is None  # the hicache writes out of plan order
    host.acknowledge(5)
    assert host.num_free == 2 and host.num_quarantined == 0


def test_the_worker_may_reuse_quarantined_slots_for_its_own_later_copies() -> None:
    host = HostSlots(2)
    slots = host.alloc(2)
    host.free(slots, after_step=9)
    assert sorted(host.alloc(2, for_worker=True)) == sorted(slots)
    assert host.num_quarantined == 0


def test_host_eviction_frees_slots_whose_copies_ran_at_once_for_a_prefetch() -> None:
    # Host memory full of host-only pages whose backups the worker has run: a prefetch, which
    # takes free slots only, must find the slots host eviction gives back.
    cache = make_cache(num_slots=2)
    insert(cache, [1, 2, 3, 4])
    run_step(cache, 1)
    cache.evict(2)
    assert cache.evict_host(2) == 2
    assert cache.host.alloc(2, for_worker=False) is not None


def test_slots_a_plan_in_flight_loads_from_wait_for_it_after_host_eviction() -> None:
    cache = make_cache(num_slots=2)
    tokens = [1, 2, 3, 4]
    insert(cache, tokens)
    run_step(cache, 1)
    cache.evict(2)
    cache.load(cache.match_prefix(tokens + [9]), cache.allocator.alloc(2))
    cache.tier.take_copies(2)  # the load rides on plan 2, whose result is not back
    cache.evict(2)
    assert cache.evict_host(2) == 2
    assert (cache.host.num_free, cache.host.num_quarantined) == (0, 2)
    cache.tier.take_stores(2)
    assert (cache.host.num_free, cache.host.num_quarantined) == (2, 0)
    cache.check_consistency()


def test_prefetched_pages_become_host_nodes_under_the_cached_prefix() -> None:
    cache = make_cache()
    tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    insert(cache, tokens[:4])
    run_step(cache, 1)
    keys = page_keys(ROOT_KEY, tokens, 2)
    slots = cache.host.alloc(2)
    assert cache.insert_prefetched(tokens, slots, keys[2:]) == []
    match = cache.match_prefix(tokens + [0])
    assert (match.num_tokens, match.num_host_tokens) == (4, 4)
    _, from_storage, _ = cache.load(match, cache.allocator.alloc(2))
    assert from_storage == 4
    cache.check_consistency()


def test_keys_chain_across_splits_and_match_a_one_shot_computation() -> None:
    cache = make_cache()
    insert(cache, [1, 2, 3, 4, 5, 6])
    insert(cache, [1, 2, 9, 9])  # splits the first edge after one page
    expected = {(1, 2, 3, 4, 5, 6): page_keys(ROOT_KEY, [1, 2, 3, 4, 5, 6], 2),
                (1, 2, 9, 9): page_keys(ROOT_KEY, [1, 2, 9, 9], 2)}
    root = cache.match_prefix([]).handle
    head = next(iter(root.children.values()))
    assert head.page_keys == expected[(1, 2, 3, 4, 5, 6)][:1]
    tails = {child.key: child.page_keys for child in head.children.values()}
    assert tails[(3, 4, 5, 6)] == expected[(1, 2, 3, 4, 5, 6)][1:]
    assert tails[(9, 9)] == expected[(1, 2, 9, 9)][1:]
    cache.check_consistency()


def test_dropping_the_host_tier_keeps_device_pages_and_forgets_host_only_nodes() -> None:
    cache = make_cache()
    insert(cache, [1, 2, 3, 4])
    insert(cache, [5, 6, 7, 8])
    run_step(cache, 1)
    cache.evict(2)
    cache.drop_host_tier(HostSlots(8))
    assert cache.num_cached_pages == 2
    assert cache.host.num_free == 8
    cache.check_consistency()


@pytest.mark.parametrize("policy", ["write_through", "write_through_selective", "write_back"])
def test_random_operations_keep_every_invariant(policy: str) -> None:
    rng = random.Random(7)
    cache = make_cache(num_pages=24, num_slots=20, policy=policy)
    locked = []
    for step in range(1, 400):
        tokens = [rng.randrange(4) for _ in range(2 * rng.randrange(1, 6))]
        salt = rng.choice((None, None, "s"))  # a second namespace, with roots coming and going
        action = rng.random()
        if action < 0.4 and cache.allocator.num_free + cache.num_evictable_pages >= 6:
            need = len(tokens) // 2 - cache.allocator.num_free
            if need > 0:
                cache.evict(need)
            insert(cache, tokens, salt)
        elif action < 0.7:
            match = cache.match_prefix(tokens, salt)
            handle = match.handle
            cache.lock(handle)
            if match.num_host_tokens:
                num = match.num_host_tokens // 2
                cache.evict(max(0, num - cache.allocator.num_free))
                pages = cache.allocator.alloc(num)
                if pages is not None:
                    new_handle, _, _ = cache.load(match, pages)
                    cache.lock(new_handle)
                    cache.unlock(handle)
                    handle = new_handle
            locked.append(handle)
        elif locked:
            cache.unlock(locked.pop(rng.randrange(len(locked))))
        else:
            cache.evict(rng.randrange(1, 4))
        run_step(cache, step)
        cache.check_consistency()
    for handle in locked:
        cache.unlock(handle)
    cache.reset()
    cache.check_consistency()


def test_write_back_backs_up_an_evicted_leaf_with_its_unhosted_ancestors() -> None:
    """Under write_back nothing is hosted before eviction, so a leaf below a shared prefix
    has an unhosted parent: the eviction backs up the path from the root, not nothing."""
    cache = make_cache(policy="write_back")
    insert(cache, [1, 2, 3, 4, 5, 6])
    insert(cache, [1, 2, 3, 4, 7, 8])  # splits: [1 2 3 4] -> [5 6], [7 8]
    assert cache.tier.take_copies(1)[1].device_pages == ()  # write_back: no backup yet
    assert cache.evict(1) == 1
    run_step(cache, 2)
    hosted = [cache.match_prefix(tokens) for tokens in ([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 7, 8])]
    assert sorted((m.num_tokens, m.num_host_tokens) for m in hosted) == [(4, 2), (6, 0)]
    cache.check_consistency()
