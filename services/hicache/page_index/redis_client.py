"""The index's Redis connection (`shared/redis_connect.py`'s, with a cluster option), checked
once at start: credentials Redis refuses stop the service, a Redis that does not answer yet
is ridden out."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AuthenticationError, AuthorizationError

from radixmesh.shared.redis_connect import REDIS_ERRORS, connect, redacted

logger = logging.getLogger(__name__)

# Credentials Redis refused: no retry heals them, so they stop the service at start.
_REFUSED = (AuthenticationError, AuthorizationError)
CONNECT_TIMEOUT_S = 2.0


class IndexStartError(Exception):
    """The page index cannot work with what the flags say (Redis refused the credentials)."""


def make_client(url: str, command_timeout_s: float,
                cluster: bool = False) -> redis_asyncio.Redis | RedisCluster:
    """A client whose commands fail after `command_timeout_s`, never retried by redis-py."""
    return connect(url, command_timeout_s, min(CONNECT_TIMEOUT_S, command_timeout_s), cluster)


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
