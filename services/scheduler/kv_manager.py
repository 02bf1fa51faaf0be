"""Moves KV pages between the allocator, the prefix cache and requests (metadata only)."""

from __future__ import annotations

from collections.abc import Iterable

from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.prefix_cache.base import PrefixCache, PrefixMatch
from radixmesh.services.scheduler.request import CachedTiers, SchedReq
from radixmesh.shared.step import PageTableWrite


class PageLeakError(AssertionError):
    """free + cached + in use != total: a page was lost or counted twice."""


class KVManager:
    """Owns the rules for a request's pages; the scheduler decides when to apply them.

    Every page is in exactly one place: free in the allocator, held by the prefix cache, or
    owned by one running request (`SchedReq.owned_pages`). `check_integrity` verifies it.
    """

    def __init__(self, allocator: PageAllocator, cache: PrefixCache, page_size: int,
                 share_running_prefixes: bool) -> None:
        self.allocator = allocator
        self.cache = cache
        self.page_size = page_size
        # With the radix cache off there is nothing to share, and inserting would free pages a
        # running request still uses.
        self.share_running_prefixes = share_running_prefixes

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    @property
    def available_pages(self) -> int:
        """Pages an allocation could get now, evicting unlocked cache entries if needed."""
        return self.allocator.num_free + self.cache.num_evictable_pages

    def match(self, req: SchedReq) -> PrefixMatch:
        """Cached prefix usable by `req`; its last token is always recomputed for its logits."""
        return self.cache.match_prefix(req.all_ids[:req.seq_len - 1], req.cache_salt)

    def admit(self, req: SchedReq, match: PrefixMatch) -> None:
        self.cache.lock(match.handle)
        req.cache_handle = match.handle
        req.page_ids = list(match.page_ids)
        req.num_tree_pages = len(match.page_ids)
        req.kv_len = match.num_tokens
        req.cached_tiers = CachedTiers(device=match.num_tokens)
        if match.num_host_tokens:
            self._load_host_part(req, match)

    def _load_host_part(self, req: SchedReq, match: PrefixMatch) -> None:
        """Device pages for the part of the match only host memory holds, filled by loads the
        next plan carries. Without room for them, those tokens are simply recomputed."""
        pages = self._alloc(match.num_host_tokens // self.page_size)
        if pages is None:
            return
        handle, from_storage, from_remote = self.cache.load(match, pages)
        self.cache.lock(handle)
        self.cache.unlock(req.cache_handle)
        req.cache_handle = handle
        req.page_ids.extend(pages)
        req.num_tree_pages = len(req.page_ids)
        req.kv_len += match.num_host_tokens
        req.cached_tiers = CachedTiers(match.num_tokens,
                                       match.num_host_tokens - from_storage - from_remote,
                                       from_storage, from_remote)

    def grow(self, req: SchedReq, num_tokens: int) -> PageTableWrite | None:
        """Extends `req`'s pages to hold `num_tokens` tokens. None, taking nothing, if the pool
        cannot, even after eviction."""
        missing = self.pages_for(num_tokens) - len(req.page_ids)
        if missing <= 0:
            return PageTableWrite(req.rid, len(req.page_ids), ())
        pages = self._alloc(missing)
        if pages is None:
            return None
        start = len(req.page_ids)
        req.page_ids.extend(pages)
        return PageTableWrite(req.rid, start, tuple(pages))

    def add_page_each(self, reqs: list[SchedReq]) -> list[PageTableWrite] | None:
        """One more page at the end of each of `reqs` (a decode step's grants), allocated in
        one go. None, taking nothing, if the pool cannot, even after eviction."""
        pages = self._alloc(len(reqs))
        if pages is None:
            return None
        # The allocator hands out from the end of `pages`: reversed, each request gets the
        # page it would have got asking alone, in turn.
        writes = [PageTableWrite(req.rid, len(req.page_ids), (page,))
                  for req, page in zip(reqs, reversed(pages), strict=True)]
        for req, write in zip(reqs, writes, strict=True):
            req.page_ids.extend(write.page_ids)
        return writes

    def share_computed(self, req: SchedReq) -> PageTableWrite | None:
        """Publishes `req`'s computed full pages in the prefix cache while it keeps running.

        Where the cache already held identical pages (another request computed the same prefix
        meanwhile), `req` switches to the cached pages and frees its own copies; the returned
        write tells the worker about the switch.
        """
        if not self.share_running_prefixes:
            return None
        # Ahead of results, KV can be planned for a token whose id is not known here yet.
        num_pages = min(req.kv_len, req.seq_len) // self.page_size
        if num_pages <= req.num_tree_pages:
            return None
        tokens = req.all_ids[:num_pages * self.page_size]
        already_cached = (self.cache.insert(tokens, req.page_ids[:num_pages], req.cache_salt)
                          // self.page_size)
        match = self.cache.match_prefix(tokens, req.cache_salt)
        assert len(match.page_ids) == num_pages, "an inserted prefix must match in full"
        duplicates = req.page_ids[req.num_tree_pages:already_cached]
        self.cache.lock(match.handle)
        self.cache.unlock(req.cache_handle)
        self.allocator.free(duplicates)
        first_remapped = req.num_tree_pages
        req.page_ids[:num_pages] = match.page_ids
        req.num_tree_pages = num_pages
        req.cache_handle = match.handle
        if not duplicates:
            return None
        return PageTableWrite(req.rid, first_remapped, tuple(match.page_ids[first_remapped:already_cached]))

    def release(self, req: SchedReq, computed_tokens: int) -> None:
        """Gives back all of `req`'s pages: full pages of computed KV go to the prefix cache (which
        frees them at once when disabled), the rest to the allocator."""
        num_pages = computed_tokens // self.page_size
        owned_full = req.page_ids[req.num_tree_pages:num_pages]
        if owned_full:
            tokens = req.all_ids[:num_pages * self.page_size]
            already_cached = (self.cache.insert(tokens, req.page_ids[:num_pages], req.cache_salt)
                              // self.page_size)
            self.allocator.free(req.page_ids[req.num_tree_pages:already_cached])
            num_kept = num_pages
        else:
            num_kept = req.num_tree_pages
        self.allocator.free(req.page_ids[num_kept:])
        if req.cache_handle is not None:
            self.cache.unlock(req.cache_handle)
        req.page_ids = []
        req.num_tree_pages = 0
        req.cache_handle = None
        req.kv_len = 0

    def check_integrity(self, running: Iterable[SchedReq]) -> None:
        in_use = sum(len(req.owned_pages) for req in running)
        free, cached = self.allocator.num_free, self.cache.num_cached_pages
        if free + cached + in_use != self.allocator.num_pages:
            raise PageLeakError(
                f"KV page leak: free {free} + cached {cached} + in use {in_use} "
                f"!= total {self.allocator.num_pages}")
        self.cache.check_consistency()

    def _alloc(self, count: int) -> list[int] | None:
        shortfall = count - self.allocator.num_free
        if shortfall > 0:
            self.cache.evict(shortfall)
        return self.allocator.alloc(count)
