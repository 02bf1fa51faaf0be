"""The prefix cache of `--disable-radix-cache`: caches nothing, frees every page at once."""

from __future__ import annotations

from collections.abc import Sequence

from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.prefix_cache.base import PrefixCache, PrefixMatch

_NO_ENTRY = object()
"""The handle of every (empty) match: locking it protects nothing, since nothing is cached."""

_EMPTY_MATCH = PrefixMatch(page_ids=(), num_tokens=0, handle=_NO_ENTRY)


class DisabledPrefixCache(PrefixCache):
    """Never matches and never holds a page, so every request computes its whole prompt.

    Locks are still counted, so that callers' lock/unlock pairing is checked the same way as
    with the radix cache and a bug does not hide behind the flag.
    """

    def __init__(self, page_size: int, allocator: PageAllocator) -> None:
        super().__init__(page_size, allocator)
        self._num_locks = 0

    def match_prefix(self, token_ids: Sequence[int], salt: str | None = None) -> PrefixMatch:
        return _EMPTY_MATCH

    def insert(self, token_ids: Sequence[int], page_ids: Sequence[int],
               salt: str | None = None) -> int:
        if len(token_ids) != len(page_ids) * self.page_size:
            raise ValueError(
                f"{len(token_ids)} tokens do not fill {len(page_ids)} pages of {self.page_size}"
            )
        self.allocator.free(page_ids)
        return 0

    def lock(self, handle: object) -> None:
        self._check_handle(handle)
        self._num_locks += 1

    def unlock(self, handle: object) -> None:
        self._check_handle(handle)
        if self._num_locks == 0:
            raise ValueError("unlock without a matching lock")
        self._num_locks -= 1

    def evict(self, num_pages: int) -> int:
        return 0

    @property
    def num_cached_pages(self) -> int:
        return 0

    @property
    def num_evictable_pages(self) -> int:
        return 0

    def reset(self) -> None:
        if self._num_locks:
            raise RuntimeError(f"reset while {self._num_locks} locks are held")

    def check_consistency(self) -> None:
        """Nothing is cached, so there is nothing to recompute; present for a uniform API."""

    @staticmethod
    def _check_handle(handle: object) -> None:
        if handle is not _NO_ENTRY:
            raise TypeError(f"not a handle of this cache: {handle!r}")
