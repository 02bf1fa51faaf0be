"""The front door's links to the mesh, kept up: connect, serve, and after any failure again.

The Router's scheduler link and the TextFeed's detokenizer subscription follow the same rules:
waiting for a peer that is still starting is normal (logged at info once per reason, then at
debug: a GPU worker's cold start is minutes of identical retries) and backs off, doubling up
to a cap; losing a peer once connected is not (a warning) and is retried at once after the first
delay; a peer of another protocol is said every time; a bug is logged and retried, never allowed
to take the front door down for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

from radixmesh.shared.errors import UnavailableError
from radixmesh.shared.mesh_protocol import HandshakeError

logger = logging.getLogger(__name__)


async def keep_connected(peer: str, connect: Callable[[], Awaitable[None]],
                         serve: Callable[[], Awaitable[None]],
                         after: Callable[[str], None], retry_delay: float,
                         max_retry_delay: float) -> NoReturn:
    """`connect()`, then `serve()` until it fails, forever (until cancelled). `after(reason)`
    runs once after each attempt, whatever ended it; `peer` names what is connected to in logs
    and in the reason."""
    delay = retry_delay
    said = ""  # the last reason logged while waiting
    while True:
        connected, reason = False, f"the {peer} link ended"
        try:
            await connect()
            connected = True
            await serve()
        except HandshakeError as exc:
            logger.error("%s", exc)
            reason = str(exc)
        except UnavailableError as exc:
            reason = str(exc)
            level = (logging.WARNING if connected else
                     logging.INFO if reason != said else logging.DEBUG)
            logger.log(level, "%s unavailable: %s", peer, exc)
        except Exception:
            logger.exception("the front door's %s link failed; connecting again", peer)
        finally:
            after(reason)
        said = "" if connected else reason
        delay = retry_delay if connected else min(delay * 2, max_retry_delay)
        await asyncio.sleep(delay)
