"""A Redis connection for what the mesh keeps there (the node registry, the page index the
hicache service writes and the router reads): made from a URL, every command bounded by a
timeout and never retried by the client itself (the callers retry on their own clock), and
the URL as a log may show it (never the password)."""

from __future__ import annotations

import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import RedisClusterException, RedisError

URL_SCHEMES = ("redis://", "rediss://", "unix://")
# What any exchange with Redis may raise that means "Redis is not answering now".
# (RedisClusterException, a cluster that cannot be mapped, is no RedisError.)
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)


def check_redis_url(flag: str, url: str, schemes: tuple[str, ...] = URL_SCHEMES) -> None:
    """Raises ValueError naming `flag` unless `url` is a Redis URL of one of `schemes` (the
    password never shown)."""
    if not url.startswith(schemes):
        allowed = " or ".join([", ".join(schemes[:-1]), schemes[-1]] if len(schemes) > 1
                              else schemes)
        raise ValueError(f"{flag} must start with {allowed}")
    try:
        parse_url(url)
    except ValueError as error:
        raise ValueError(f"{flag} is not a Redis URL: {error}") from None


def redacted(url: str) -> str:
    """Scheme, user, host, port and db; never the password."""
    parts = parse_url(url)
    scheme = url.split("://", 1)[0]
    user = f"{parts['username']}@" if parts.get("username") else ""
    return (f"{scheme}://{user}{parts.get('host', parts.get('path', ''))}:"
            f"{parts.get('port', 6379)}/{parts.get('db', 0)}")


def connect(url: str, timeout_s: float, connect_timeout_s: float | None = None,
            cluster: bool = False) -> redis_asyncio.Redis | RedisCluster:
    """A client (strings decoded) whose every command fails after `timeout_s` (a stopped
    Redis must not hang its caller) and connecting after `connect_timeout_s` (default: the
    same). `cluster`: the URL names one node of a Redis Cluster, and the client learns the
    others from it."""
    options = {"decode_responses": True, "socket_timeout": timeout_s,
               "socket_connect_timeout": connect_timeout_s or timeout_s,
               "retry": Retry(NoBackoff(), 0)}
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis_asyncio.from_url(url, health_check_interval=0, **options)
