"""The index's Redis connection: made from the URL, checked once at start, never retried by the
client itself (the index's writer retries on its own clock, and a lookup has one deadline)."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    RedisClusterException,
    RedisError,
)

logger = logging.getLogger(__name__)

# What any exchange with Redis may raise that means "Redis is not answering now": a miss.
# (RedisClusterException, a cluster that cannot be mapped, is no RedisError.)
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
# Credentials Redis refused: no retry heals them, so they stop the service at start.
_REFUSED = (AuthenticationError, AuthorizationError)
CONNECT_TIMEOUT_S = 2.0


class IndexStartError(Exception):
    """The page index cannot work with what the flags say (Redis refused the credentials)."""


def redacted(url: str) -> str:
    """The URL as a log may show it: scheme, user, host, port and db, never the password."""
    parts = parse_url(url)
    scheme = url.split("://", 1)[0]
    user = f"{parts['username']}@" if parts.get("username") else ""
    return f"{scheme}://{user}{parts.get('host', '')}:{parts.get('port', 6379)}/{parts.get('db', 0)}"


def make_client(url: str, command_timeout_s: float,
                cluster: bool = False) -> redis_asyncio.Redis | RedisCluster:
    """A client whose every command fails after `command_timeout_s` (a stopped Redis must
    not hang a writer) and is never retried by redis-py. `cluster`: the URL names one node of
    a Redis Cluster, and the client learns the others from it."""
    options = {"decode_responses": True, "socket_timeout": command_timeout_s,
               "socket_connect_timeout": min(CONNECT_TIMEOUT_S, command_timeout_s),
               "retry": Retry(NoBackoff(), 0)}
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis_asyncio.from_url(url, health_check_interval=0, **options)


async def check_credentials(client: redis_asyncio.Redis | RedisCluster, url: str,
                            timeout_s: float) -> bool:
    """True when Redis answers; False (with a warning) when it does not answer now, which the
    index rides out; IndexStartError when it refuses the URL's credentials."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.ping()
    except _REFUSED as error:
        raise IndexStartError(
            f"--hicache-redis-url {redacted(url)}: Redis refused the credentials: {error} "
            "(check the user and password in the URL)") from None
    except REDIS_ERRORS as error:
        logger.warning("page index: Redis at %s does not answer (%s); lookups are misses until "
                       "it does", redacted(url), error or type(error).__name__)
        return False
    return True
