"""KV page allocator: pure metadata. The scheduler owns it; the KV tensors live in the worker."""

from __future__ import annotations

from collections.abc import Iterable


class PageAllocator:
    """Hands out page ids 1..num_pages (page 0 is the worker's padding page).

    Invariant: every page id is either free here or owned by exactly one holder (a running
    request or the prefix cache). Double frees and foreign ids fail loudly, since either means
    a page would be shared by two requests that both write it.
    """

    def __init__(self, num_pages: int) -> None:
        if num_pages < 1:
            raise ValueError(f"the KV pool needs at least one page, got {num_pages}")
        self.num_pages = num_pages
        # Reversed so that pops hand out low ids first: easier to read in logs and tests.
        self._free: list[int] = list(range(num_pages, 0, -1))
        self._is_free = bytearray([0] + [1] * num_pages)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, count: int) -> list[int] | None:
        """Returns `count` page ids, or None (taking nothing) if fewer are free."""
        if count < 0:
            raise ValueError(f"cannot allocate {count} pages")
        if count > len(self._free):
            return None
        if count == 0:
            return []
        pages = self._free[-count:]
        del self._free[-count:]
        for page in pages:
            self._is_free[page] = 0
        return pages

    def free(self, pages: Iterable[int]) -> None:
        """All or nothing: a bad id leaves every page as it was."""
        pages = list(pages)
        seen: set[int] = set()
        for page in pages:
            if not 1 <= page <= self.num_pages:
                raise ValueError(f"page {page} is not in this pool (1..{self.num_pages})")
            if self._is_free[page] or page in seen:
                raise ValueError(f"page {page} freed twice")
            seen.add(page)
        for page in pages:
            self._is_free[page] = 1
        self._free.extend(pages)
