"""Prefix caches: token ids -> KV page ids shared between requests (scheduler side, metadata)."""

from __future__ import annotations

from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.prefix_cache.base import PrefixCache, PrefixMatch
from radixmesh.services.scheduler.prefix_cache.disabled import DisabledPrefixCache
from radixmesh.services.scheduler.prefix_cache.radix_cache import RadixCache
from radixmesh.shared.registry import Registry

__all__ = [
    "DisabledPrefixCache",
    "PrefixCache",
    "PrefixMatch",
    "PREFIX_CACHES",
    "RadixCache",
    "make_prefix_cache",
]


PREFIX_CACHES: Registry[type[PrefixCache]] = Registry("prefix cache")
PREFIX_CACHES.add("radix", RadixCache)
PREFIX_CACHES.add("disabled", DisabledPrefixCache)


def make_prefix_cache(
    disable_radix_cache: bool, page_size: int, allocator: PageAllocator
) -> PrefixCache:
    """The cache that `--disable-radix-cache` selects."""
    return PREFIX_CACHES.get("disabled" if disable_radix_cache else "radix")(page_size, allocator)
