"""A Redis connection for what the router and the node registry keep there: made from a URL,
every command bounded by a timeout and never retried by the client itself (the callers retry
on their own clock), and the URL as a log may show it (never the password)."""

from __future__ import annotations

import redis.asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import RedisError

URL_SCHEMES = ("redis://", "rediss://", "unix://")
# What any exchange with Redis may raise that means "Redis is not answering now".
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


def check_redis_url(flag: str, url: str) -> None:
    """Raises ValueError naming `flag` unless `url` is a Redis URL (the password never shown)."""
    if not url.startswith(URL_SCHEMES):
        raise ValueError(f"{flag} must start with redis://, rediss:// or unix://")
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


def connect(url: str, timeout_s: float) -> redis_asyncio.Redis:
    """A client (strings decoded) whose every command fails after `timeout_s`."""
    return redis_asyncio.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                                  socket_connect_timeout=timeout_s, health_check_interval=0,
                                  retry=Retry(NoBackoff(), 0))
