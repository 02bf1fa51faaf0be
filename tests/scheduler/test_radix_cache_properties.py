"""RadixCache against a deliberately naive model, driven by random operation sequences.

The model keeps one entry per cached page-aligned prefix (prefix -> page id, last use) and
recomputes everything by brute force. Tokens come from a two-letter alphabet and new sequences
often extend or cut earlier ones, so prefixes are shared, diverge inside pages, and force splits.
Pages are conserved throughout: between steps every page is either free or cached.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.prefix_cache import RadixCache

Prefix = tuple[int, ...]


class ReferenceCache:
    """The prefix cache's contract, by brute force over every cached prefix."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.pages: dict[Prefix, int] = {}
        self.last_use: dict[Prefix, int] = {}
        self.locks: Counter[Prefix] = Counter()
        self.born: dict[Prefix, int] = {}  # when the entry was cached: tells re-insertions apart
        self.clock = 0

    def _aligned_prefixes(self, tokens: list[int]) -> list[Prefix]:
        end = len(tokens) - len(tokens) % self.page_size
        return [tuple(tokens[:n]) for n in range(self.page_size, end + 1, self.page_size)]

    def match(self, tokens: list[int]) -> tuple[Prefix, list[int]]:
        """The matched prefix (the handle) and its pages; marks them used."""
        self.clock += 1
        matched: list[Prefix] = []
        for prefix in self._aligned_prefixes(tokens):
            if prefix not in self.pages:
                break
            matched.append(prefix)
            self.last_use[prefix] = self.clock
        return (matched[-1] if matched else ()), [self.pages[p] for p in matched]

    def insert(self, tokens: list[int], page_ids: list[int]) -> int:
        self.clock += 1
        num_cached = 0
        for index, prefix in enumerate(self._aligned_prefixes(tokens)):
            if prefix in self.pages and num_cached == len(prefix) - self.page_size:
                num_cached = len(prefix)
            else:
                self.pages[prefix] = page_ids[index]
                self.born[prefix] = self.clock
            self.last_use[prefix] = self.clock
        return num_cached

    def _is_locked(self, prefix: Prefix) -> bool:
        return any(
            count and held[: len(prefix)] == prefix and len(held) >= len(prefix)
            for held, count in self.locks.items()
        )

    def _is_leaf(self, prefix: Prefix) -> bool:
        return not any(
            len(other) > len(prefix) and other[: len(prefix)] == prefix for other in self.pages
        )

    def num_evictable(self) -> int:
        return sum(not self._is_locked(prefix) for prefix in self.pages)

    def evict(self, num_pages: int) -> list[int]:
        freed: list[int] = []
        for _ in range(num_pages):
            candidates = [p for p in self.pages if self._is_leaf(p) and not self._is_locked(p)]
            if not candidates:
                break
            oldest = min(candidates, key=self.last_use.__getitem__)
            uses = [self.last_use[p] for p in candidates]
            assert uses.count(self.last_use[oldest]) == 1, "LRU tie: the model is ambiguous"
            freed.append(self.pages.pop(oldest))
            del self.last_use[oldest], self.born[oldest]
        return freed

    def reset(self) -> None:
        self.pages.clear()
        self.last_use.clear()
        self.born.clear()

    def is_live(self, prefix: Prefix, born: int | None) -> bool:
        """Whether a handle for `prefix` taken when it was `born` still names cached pages."""
        return not prefix or self.born.get(prefix) == born


def free_page_ids(allocator: PageAllocator) -> set[int]:
    """The free ids, read through the public API (take them all, give them back)."""
    pages = allocator.alloc(allocator.num_free) or []
    allocator.free(pages)
    return set(pages)


class RadixCacheMachine(RuleBasedStateMachine):
    page_size = 1
    num_pages = 24
    max_pages_per_sequence = 8

    def __init__(self) -> None:
        super().__init__()
        self.allocator = PageAllocator(self.num_pages)
        self.cache = RadixCache(self.page_size, self.allocator)
        self.model = ReferenceCache(self.page_size)
        self.seen: list[list[int]] = []
        self.held: list[tuple[object, Prefix]] = []  # locked (handle, model's prefix)
        # Matches not locked yet: (handle, prefix, when its entry was born).
        self.unlocked: list[tuple[object, Prefix, int | None]] = []

    # -- helpers --------------------------------------------------------------------------

    def _draw_tokens(self, data: st.DataObject, page_aligned: bool) -> list[int]:
        base: list[int] = []
        if self.seen and data.draw(st.booleans(), label="reuse"):
            base = data.draw(st.sampled_from(self.seen), label="base")
        cut = data.draw(st.integers(0, len(base)), label="cut")
        tail = data.draw(st.lists(st.integers(0, 1), max_size=3 * self.page_size), label="tail")
        tokens = (base[:cut] + tail)[: self.max_pages_per_sequence * self.page_size]
        if page_aligned:
            tokens = tokens[: len(tokens) - len(tokens) % self.page_size]
        return tokens

    def _match_both(self, tokens: list[int]) -> tuple[object, Prefix, tuple[int, ...]]:
        match = self.cache.match_prefix(tokens)
        prefix, pages = self.model.match(tokens)
        assert match.page_ids == tuple(pages)
        assert match.num_tokens == len(prefix)
        return match.handle, prefix, match.page_ids

    def _evict_both(self, num_pages: int) -> None:
        free_before = free_page_ids(self.allocator)
        expected = min(num_pages, self.model.num_evictable())
        model_freed = self.model.evict(num_pages)
        assert self.cache.evict(num_pages) == len(model_freed) == expected
        assert free_page_ids(self.allocator) - free_before == set(model_freed)

    def _alloc(self, count: int) -> list[int] | None:
        """Allocates like the scheduler does: evicting the shortfall first."""
        if self.allocator.num_free < count:
            self._evict_both(count - self.allocator.num_free)
        return self.allocator.alloc(count)

    # -- operations -----------------------------------------------------------------------

    @rule(data=st.data())
    def insert_fresh_pages(self, data: st.DataObject) -> None:
        tokens = self._draw_tokens(data, page_aligned=True)
        pages = self._alloc(len(tokens) // self.page_size)
        if pages is None:
            return
        num_cached = self.cache.insert(tokens, pages)
        assert num_cached == self.model.insert(tokens, pages)
        self.allocator.free(pages[: num_cached // self.page_size])
        self.seen.append(tokens)

    @rule(data=st.data())
    def insert_after_match(self, data: st.DataObject) -> None:
        """The scheduler's pattern: match, lock, allocate the rest, insert, unlock."""
        tokens = self._draw_tokens(data, page_aligned=True)
        handle, prefix, shared = self._match_both(tokens)
        self.cache.lock(handle)
        self.model.locks[prefix] += 1
        fresh = self._alloc(len(tokens) // self.page_size - len(shared))
        if fresh is not None:
            num_cached = self.cache.insert(tokens, [*shared, *fresh])
            assert num_cached == self.model.insert(tokens, [*shared, *fresh]) == len(prefix)
            self.seen.append(tokens)
        self.cache.unlock(handle)
        self.model.locks[prefix] -= 1

    @rule(data=st.data(), lock=st.booleans())
    def match(self, data: st.DataObject, lock: bool) -> None:
        tokens = self._draw_tokens(data, page_aligned=False)
        handle, prefix, _ = self._match_both(tokens)
        if lock:
            self.cache.lock(handle)
            self.model.locks[prefix] += 1
            self.held.append((handle, prefix))
        else:
            self.unlocked = [*self.unlocked[-7:], (handle, prefix, self.model.born.get(prefix))]

    @precondition(lambda self: self.unlocked)
    @rule(data=st.data())
    def lock_an_earlier_match(self, data: st.DataObject) -> None:
        """Locking a handle whose pages were evicted since its match must fail loudly."""
        index = data.draw(st.integers(0, len(self.unlocked) - 1), label="unlocked")
        handle, prefix, born = self.unlocked.pop(index)
        if self.model.is_live(prefix, born):
            self.cache.lock(handle)
            self.model.locks[prefix] += 1
            self.held.append((handle, prefix))
        else:
            with pytest.raises(ValueError, match="evicted"):
                self.cache.lock(handle)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def unlock(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.held) - 1), label="held")
        handle, prefix = self.held.pop(index)
        self.cache.unlock(handle)
        self.model.locks[prefix] -= 1

    @rule(num_pages=st.integers(0, 12))
    def evict(self, num_pages: int) -> None:
        self._evict_both(num_pages)

    @precondition(lambda self: not self.held)
    @rule()
    def reset(self) -> None:
        self.cache.reset()
        self.model.reset()
        assert self.allocator.num_free == self.num_pages

    # -- checked after every step ---------------------------------------------------------

    @invariant()
    def counters_match_the_model(self) -> None:
        assert self.cache.num_cached_pages == len(self.model.pages)
        assert self.cache.num_evictable_pages == self.model.num_evictable()
        self.cache.check_consistency()

    @invariant()
    def every_page_is_free_or_cached(self) -> None:
        cached = set(self.model.pages.values())
        assert len(cached) == len(self.model.pages)
        assert free_page_ids(self.allocator).isdisjoint(cached)
        assert self.allocator.num_free + self.cache.num_cached_pages == self.num_pages


class RadixCacheMachinePages4(RadixCacheMachine):
    page_size = 4


_SETTINGS = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRadixCachePageSize1 = RadixCacheMachine.TestCase
TestRadixCachePageSize1.settings = _SETTINGS
TestRadixCachePageSize4 = RadixCacheMachinePages4.TestCase
TestRadixCachePageSize4.settings = _SETTINGS
