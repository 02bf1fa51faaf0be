"""RadixCache and DisabledPrefixCache: matching, inserting, locking and evicting whole pages."""

import pytest

from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.prefix_cache import (
    DisabledPrefixCache,
    RadixCache,
    make_prefix_cache,
)


def _cache(page_size: int = 1, num_pages: int = 64) -> RadixCache:
    return RadixCache(page_size, PageAllocator(num_pages))


def _insert_fresh(cache: RadixCache, tokens: list[int]) -> list[int]:
    """Inserts `tokens` on freshly allocated pages, freeing any duplicates; returns the pages."""
    pages = cache.allocator.alloc(len(tokens) // cache.page_size)
    assert pages is not None
    num_cached = cache.insert(tokens, pages)
    cache.allocator.free(pages[: num_cached // cache.page_size])
    return pages


def _free_page_ids(allocator: PageAllocator) -> set[int]:
    """The free ids, read through the public API (take them all, give them back)."""
    pages = allocator.alloc(allocator.num_free) or []
    allocator.free(pages)
    return set(pages)


def test_match_after_insert_returns_the_inserted_pages() -> None:
    cache = _cache()
    pages = _insert_fresh(cache, [5, 6, 7])
    match = cache.match_prefix([5, 6, 7, 8])
    assert match.page_ids == tuple(pages)
    assert match.num_tokens == 3
    assert cache.num_cached_pages == 3
    assert cache.match_prefix([6, 5]).num_tokens == 0
    cache.check_consistency()


def test_match_rounds_down_to_whole_pages() -> None:
    cache = _cache(page_size=4)
    pages = _insert_fresh(cache, list(range(12)))
    match = cache.match_prefix(list(range(10)))
    assert match.num_tokens == 8
    assert match.page_ids == tuple(pages[:2])
    assert cache.match_prefix([0, 1, 2]).num_tokens == 0


def test_divergence_inside_a_page_rounds_down() -> None:
    cache = _cache(page_size=4)
    _insert_fresh(cache, [0, 1, 2, 3, 4, 5, 6, 7])
    pages = cache.allocator.alloc(2)
    assert pages is not None
    assert cache.insert([0, 1, 2, 3, 4, 5, 9, 9], pages) == 4
    assert cache.num_cached_pages == 3
    assert cache.match_prefix([0, 1, 2, 3, 4, 5, 9, 9]).page_ids[1] == pages[1]
    cache.check_consistency()


def test_partial_match_splits_the_edge_at_a_page_boundary() -> None:
    cache = _cache(page_size=2)
    first = _insert_fresh(cache, [1, 1, 2, 2, 3, 3])
    second = _insert_fresh(cache, [1, 1, 2, 2, 4, 4, 5, 5])
    assert cache.num_cached_pages == 5
    assert cache.match_prefix([1, 1, 2, 2, 3, 3]).page_ids == tuple(first)
    assert cache.match_prefix([1, 1, 2, 2, 4, 4, 5, 5]).page_ids == (*first[:2], *second[2:])
    head = cache.match_prefix([1, 1, 9, 9])  # splits again, after the first page
    assert head.page_ids == (first[0],)
    cache.check_consistency()


def test_insert_reports_cached_prefix_and_keeps_its_own_pages() -> None:
    cache = _cache()
    original = _insert_fresh(cache, [1, 2, 3])
    duplicate = cache.allocator.alloc(4)
    assert duplicate is not None
    assert cache.insert([1, 2, 3, 4], duplicate) == 3
    assert cache.match_prefix([1, 2, 3, 4]).page_ids == (*original, duplicate[3])
    assert cache.num_cached_pages == 4
    free_before = cache.allocator.num_free
    cache.allocator.free(duplicate[:3])  # the caller's to free, and not freed twice
    assert cache.allocator.num_free == free_before + 3
    cache.check_consistency()


def test_lock_protects_the_entry_and_its_ancestors() -> None:
    cache = _cache()
    _insert_fresh(cache, [1, 2, 3, 4])
    _insert_fresh(cache, [1, 2, 5, 6])
    handle = cache.match_prefix([1, 2, 3, 4]).handle
    cache.lock(handle)
    assert cache.num_evictable_pages == 2
    assert cache.evict(10) == 2
    assert cache.match_prefix([1, 2, 3, 4]).num_tokens == 4
    assert cache.match_prefix([1, 2, 5, 6]).num_tokens == 2
    cache.unlock(handle)
    assert cache.num_evictable_pages == 4
    assert cache.evict(10) == 4
    assert cache.num_cached_pages == 0
    cache.check_consistency()


def test_locks_nest() -> None:
    cache = _cache()
    _insert_fresh(cache, [1, 2])
    handle = cache.match_prefix([1, 2]).handle
    cache.lock(handle)
    cache.lock(handle)
    cache.unlock(handle)
    assert cache.evict(2) == 0
    cache.unlock(handle)
    with pytest.raises(ValueError, match="without a matching lock"):
        cache.unlock(handle)
    assert cache.evict(2) == 2


def test_handle_survives_a_later_split() -> None:
    cache = _cache()
    _insert_fresh(cache, [1, 2, 3, 4])
    handle = cache.match_prefix([1, 2, 3, 4]).handle
    cache.lock(handle)
    _insert_fresh(cache, [1, 2, 9])  # splits the locked edge after two tokens
    assert cache.num_evictable_pages == 1
    cache.unlock(handle)
    assert cache.num_evictable_pages == 5
    cache.check_consistency()


def test_empty_match_handle_locks_and_unlocks() -> None:
    cache = _cache()
    match = cache.match_prefix([7, 7])
    assert match.num_tokens == 0 and match.page_ids == ()
    cache.lock(match.handle)
    with pytest.raises(RuntimeError):
        cache.reset()
    cache.unlock(match.handle)
    cache.reset()


def test_eviction_takes_the_least_recently_used_leaf_first() -> None:
    cache = _cache()
    pages = {token: _insert_fresh(cache, [token])[0] for token in (1, 2, 3)}
    cache.match_prefix([1])  # 2 is now the oldest
    assert cache.evict(1) == 1
    assert _free_page_ids(cache.allocator) >= {pages[2]}
    assert cache.match_prefix([2]).num_tokens == 0
    assert cache.evict(1) == 1
    assert cache.match_prefix([3]).num_tokens == 0
    assert cache.match_prefix([1]).num_tokens == 1


def test_parent_becomes_a_candidate_once_its_children_are_gone() -> None:
    cache = _cache()
    _insert_fresh(cache, [1, 2, 3])
    _insert_fresh(cache, [1, 2, 4])
    _insert_fresh(cache, [9])  # newer than the [1, 2] branch
    assert cache.evict(4) == 4  # [3], [4], then their parent [1, 2]
    assert cache.match_prefix([9]).num_tokens == 1
    assert cache.match_prefix([1, 2, 3]).num_tokens == 0


def test_evict_trims_a_leaf_from_its_end_and_never_frees_more_than_asked() -> None:
    cache = _cache(page_size=2)
    pages = _insert_fresh(cache, [1, 1, 2, 2, 3, 3])
    free_before = _free_page_ids(cache.allocator)
    assert cache.evict(1) == 1
    assert _free_page_ids(cache.allocator) == free_before | {pages[2]}
    assert cache.match_prefix([1, 1, 2, 2, 3, 3]).page_ids == tuple(pages[:2])
    assert cache.num_cached_pages == cache.num_evictable_pages == 2
    cache.check_consistency()


def test_a_handle_is_stale_once_any_of_its_pages_is_evicted() -> None:
    cache = _cache()
    _insert_fresh(cache, [1, 2, 3])
    handle = cache.match_prefix([1, 2, 3]).handle
    assert cache.evict(1) == 1  # trims the tail: the handle would now cover a freed page
    with pytest.raises(ValueError, match="evicted"):
        cache.lock(handle)
    cache.lock(cache.match_prefix([1, 2, 3]).handle)  # a fresh match is fine
    cache.check_consistency()


def test_evict_frees_into_the_allocator() -> None:
    cache = _cache(num_pages=8)
    _insert_fresh(cache, [1, 2, 3, 4, 5])
    assert cache.allocator.num_free == 3
    assert cache.evict(4) == 4
    assert cache.allocator.num_free == 7
    assert cache.allocator.alloc(7) is not None


def test_reset_frees_everything_and_stales_old_handles() -> None:
    cache = _cache(num_pages=8)
    _insert_fresh(cache, [1, 2, 3])
    handle = cache.match_prefix([1, 2, 3]).handle
    cache.reset()
    assert cache.allocator.num_free == 8
    assert cache.num_cached_pages == cache.num_evictable_pages == 0
    with pytest.raises(ValueError, match="evicted"):
        cache.lock(handle)
    cache.check_consistency()


def test_insert_rejects_tokens_that_do_not_fill_the_pages() -> None:
    cache = _cache(page_size=4)
    with pytest.raises(ValueError):
        cache.insert([1, 2, 3], [1])


def test_consistency_check_catches_a_corrupted_counter() -> None:
    cache = _cache()
    _insert_fresh(cache, [1, 2])
    cache._num_cached_pages += 1  # simulate a bookkeeping bug
    with pytest.raises(AssertionError, match="cached"):
        cache.check_consistency()


def test_disabled_cache_frees_inserted_pages_at_once() -> None:
    allocator = PageAllocator(8)
    cache = DisabledPrefixCache(2, allocator)
    pages = allocator.alloc(3)
    assert pages is not None
    assert cache.insert([1, 1, 2, 2, 3, 3], pages) == 0
    assert allocator.num_free == 8
    match = cache.match_prefix([1, 1, 2, 2])
    assert match.num_tokens == 0 and match.page_ids == ()
    cache.lock(match.handle)
    cache.unlock(match.handle)
    assert cache.evict(4) == 0
    assert cache.num_cached_pages == cache.num_evictable_pages == 0
    with pytest.raises(ValueError):
        cache.unlock(match.handle)


def test_make_prefix_cache_honours_the_flag() -> None:
    allocator = PageAllocator(4)
    assert isinstance(make_prefix_cache(True, 1, allocator), DisabledPrefixCache)
    assert isinstance(make_prefix_cache(False, 4, allocator), RadixCache)
