"""The cross-node page index of the hicache service (design §4): an interface, and Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING

from radixmesh.services.hicache.page_index.base import NO_RUN, IndexStats, PageIndex, RemoteRun
from radixmesh.services.hicache.page_index.redis_client import IndexStartError
from radixmesh.services.hicache.page_index.redis_index import RedisPageIndex

if TYPE_CHECKING:
    from radixmesh.services.hicache.config import HiCacheConfig

__all__ = ["NO_RUN", "IndexStartError", "IndexStats", "PageIndex", "RedisPageIndex",
           "RemoteRun", "make_page_index"]


def make_page_index(config: HiCacheConfig) -> PageIndex | None:
    """The index `--hicache-redis-url` asks for; None without one."""
    if config.hicache_redis_url is None:
        return None
    assert config.node_id is not None  # the config resolves it
    return RedisPageIndex(config.hicache_redis_url, config.node_id,
                          config.hicache_redis_key_prefix, config.hicache_redis_timeout,
                          config.hicache_redis_ttl, config.hicache_redis_cluster)
