"""What the hicache core counts, for `/metrics`: copies each way, lookups, and tier sizes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from radixmesh.services.hicache.storage import StorageStats, StorageUsage


@dataclass(frozen=True, slots=True)
class CopyStats:
    """Pages moved one way between L2 and L3 since start; `seconds` is the time the transfers
    took (file I/O and copies), so `bytes / seconds` is their bandwidth."""

    pages: int = 0
    tokens: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def plus(self, pages: int, page_size: int, num_bytes: int, seconds: float) -> CopyStats:
        """`num_bytes`: of all `pages` together."""
        return CopyStats(self.pages + pages, self.tokens + pages * page_size,
                         self.bytes + num_bytes, self.seconds + seconds)


@dataclass(frozen=True, slots=True)
class HiCacheStats:
    """Counters since start; each only grows. Tokens are pages times the page size of the pool
    they moved through, so a re-attach with another page size keeps the past counts exact."""

    lookups: int = 0
    lookup_hit_pages: int = 0
    lookup_hit_tokens: int = 0
    prefetched: CopyStats = CopyStats()  # L3 -> L2
    stored: CopyStats = CopyStats()      # L2 -> L3
    fetched: CopyStats = CopyStats()     # another node -> L2 (seconds: each fetch's wall time)
    served: CopyStats = CopyStats()      # L3 -> another node
    fetch_rejected_pages: int = 0  # fetched pages that failed their check (never placed)
    fetch_fallbacks: int = 0       # fetches that placed fewer pages than asked: the rest is
                                   # recomputed

    def plus_lookup(self, hit_pages: int, page_size: int) -> HiCacheStats:
        return replace(self, lookups=self.lookups + 1,
                       lookup_hit_pages=self.lookup_hit_pages + hit_pages,
                       lookup_hit_tokens=self.lookup_hit_tokens + hit_pages * page_size)


@dataclass(frozen=True, slots=True)
class HiCacheSnapshot:
    """Everything `/metrics` shows, read at once. The storage fields are None without L3."""

    stats: HiCacheStats
    l2_slots: int
    l2_bytes: int
    storage_usage: StorageUsage | None
    storage_stats: StorageStats | None
