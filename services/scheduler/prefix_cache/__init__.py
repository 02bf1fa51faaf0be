"""Prefix caches: token ids -> KV page ids shared between requests (scheduler side, metadata)."""

from __future__ import annotations

from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.prefix_cache.base import PrefixCache, PrefixMatch
from radixmesh.services.scheduler.prefix_cache.disabled import DisabledPrefixCache
from radixmesh.services.scheduler.prefix_cache.radix_cache import RadixCache

__all__ = [
    "DisabledPrefixCache",
    "PrefixCache",
    "PrefixMatch",
    "RadixCache",
    "make_prefix_cache",
]


def make_prefix_cache(
    disable_radix_cache: bool, page_size: int, allocator: PageAllocator
) -> PrefixCache:
    """The cache that `--disable-radix-cache` selects."""
    cache_type = DisabledPrefixCache if disable_radix_cache else RadixCache
    return cache_type(page_size, allocator)
