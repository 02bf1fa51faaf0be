"""Checks of the page index flags, so a bad one stops the service at start, naming the flag."""

from __future__ import annotations

from typing import Protocol

from radixmesh.shared.redis_connect import check_redis_url

URL_SCHEMES = ("redis://", "rediss://")  # no unix://: the other nodes read the index too
# Hash tags ({...}) place a node's keys in one Redis Cluster slot; a brace or a space in a name
# would break the tag or the space-separated values.
_FORBIDDEN = set("{} \t\r\n")


class IndexFlags(Protocol):
    hicache_redis_url: str | None
    hicache_storage_backend: str | None
    node_id: str | None
    hicache_advertise_address: str | None
    hicache_redis_key_prefix: str
    hicache_redis_timeout: float
    hicache_redis_ttl: int
    hicache_redis_cluster: bool


def _check_name(flag: str, value: str, may_be_empty: bool = False) -> None:
    if not value and not may_be_empty:
        raise ValueError(f"{flag} must not be empty")
    bad = sorted(_FORBIDDEN & set(value))
    if bad:
        raise ValueError(f"{flag} must not contain {' '.join(repr(char) for char in bad)}, "
                         f"got {value!r}")


def check_index_flags(flags: IndexFlags) -> None:
    """Raises ValueError naming the first bad flag. The URL's password never appears in it."""
    _check_name("--node-id", flags.node_id or "")
    _check_name("--hicache-redis-key-prefix", flags.hicache_redis_key_prefix, may_be_empty=True)
    if flags.hicache_advertise_address is not None:
        _check_name("--hicache-advertise-address", flags.hicache_advertise_address)
    if not flags.hicache_redis_timeout > 0:
        raise ValueError(f"--hicache-redis-timeout must be > 0 s, "
                         f"got {flags.hicache_redis_timeout}")
    if flags.hicache_redis_ttl < 3:
        raise ValueError(f"--hicache-redis-ttl must be >= 3 s (entries are refreshed every "
                         f"third of it), got {flags.hicache_redis_ttl}")
    url = flags.hicache_redis_url
    if url is None:
        return
    check_redis_url("--hicache-redis-url", url, URL_SCHEMES)
    if flags.hicache_storage_backend is None:
        raise ValueError("--hicache-redis-url needs --hicache-storage-backend: the index "
                         "advertises the pages this node holds in L3")
