"""The prefix cache interface: token ids -> KV page ids, shared between requests."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from radixmesh.services.scheduler.page_allocator import PageAllocator


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """The longest cached page-aligned prefix of a token sequence.

    `handle` names the deepest matched entry; pass it to `lock`/`unlock`. It is opaque to callers.
    A tiered cache may also match `num_host_tokens` more tokens held only in host memory, past
    the device prefix; `host_handle` names them for `load` (an empty match has none).
    """

    page_ids: tuple[int, ...]
    num_tokens: int
    handle: object
    num_host_tokens: int = 0
    host_handle: object = None


class PrefixCache(ABC):
    """Maps page-aligned token prefixes to the KV pages that hold them.

    Invariants every implementation keeps:
    - Whole pages only: a match, an insert and an eviction cover a multiple of `page_size` tokens.
    - Pages the cache holds are owned by it: it frees them into `allocator` when it evicts them,
      and no caller frees them.
    - A locked entry and all its ancestors are never evicted. `lock` and `unlock` nest: an entry
      is evictable again once every lock on it (or on a descendant) is released.
    - Eviction takes least-recently-used unlocked leaves first; `match_prefix` and `insert` count
      as uses.
    - `num_cached_pages` counts every page held, locked or not; `num_evictable_pages` only those
      that `evict` could free now, and `evict(n)` frees exactly `min(n, num_evictable_pages)`.
    - A handle from `match_prefix` is only safe until the next `evict` unless it is locked.
    - Namespaces: every call takes the request's cache salt (None: no salt). What is inserted
      under one salt is matched only under that same salt, so requests of different salts, or
      salted and unsalted ones, never share a page; requests of one salt share as usual.
    """

    def __init__(self, page_size: int, allocator: PageAllocator) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size
        self.allocator = allocator

    @abstractmethod
    def match_prefix(self, token_ids: Sequence[int], salt: str | None = None) -> PrefixMatch:
        """Longest prefix of `token_ids` cached under `salt`, rounded down to whole pages."""

    @abstractmethod
    def insert(self, token_ids: Sequence[int], page_ids: Sequence[int],
               salt: str | None = None) -> int:
        """Caches `page_ids` as the KV of `token_ids` (len(token_ids) == len(page_ids) * page_size).

        Returns how many leading tokens were already cached; the cache did not take the caller's
        pages for them. Of those, the caller frees the ones it owns (those past the prefix it had
        matched from the cache). Every page after that prefix now belongs to the cache.
        """

    def load(self, match: PrefixMatch, device_pages: Sequence[int]) -> tuple[object, int]:
        """Gives the host-only part of `match` the `device_pages` (a tiered cache plans their
        loads); returns the handle to lock instead of `match.handle` and how many of those
        tokens a prefetch from L3 had brought. Only a cache with a host tier matches such parts.
        """
        raise NotImplementedError(f"{type(self).__name__} has no host tier")

    @abstractmethod
    def lock(self, handle: object) -> None:
        """Protects the entry and its ancestors from eviction."""

    @abstractmethod
    def unlock(self, handle: object) -> None:
        """Releases one `lock` on the entry."""

    @abstractmethod
    def evict(self, num_pages: int) -> int:
        """Frees up to `num_pages` pages into the allocator, LRU leaves first. Returns how many."""

    @property
    @abstractmethod
    def num_cached_pages(self) -> int:
        """Pages held by the cache, locked or not."""

    @property
    @abstractmethod
    def num_evictable_pages(self) -> int:
        """Pages `evict` could free right now."""

    @abstractmethod
    def check_consistency(self) -> None:
        """Recomputes every counter from the structure; raises AssertionError on a mismatch."""

    @abstractmethod
    def reset(self) -> None:
        """Frees every page into the allocator. Only valid while nothing is locked."""
