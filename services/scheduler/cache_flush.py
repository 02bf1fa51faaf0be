"""Emptying the prefix cache on request (`/flush_cache`, as SGLang's): only while idle.

A live request holds locks on the pages it matched, and a step in flight may still write into
pages the tree holds, so the flush is refused while any request waits or runs, or any plan or
copy between the tiers is in flight; the client retries once the mesh is idle (SGLang answers
such a flush with 400 likewise). An idle flush frees every page of the tree (and the host
tier's slots, in a tiered cache) at once.
"""

from __future__ import annotations

import logging

from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.shared.mesh_info import CacheFlush

logger = logging.getLogger(__name__)


def flush_cache(scheduler: Scheduler, num_inflight: int) -> CacheFlush:
    """Resets `scheduler`'s prefix cache if nothing is live; `num_inflight` counts the plans
    the loop has sent and not yet had results for."""
    busy = len(scheduler.waiting) + len(scheduler.running)
    if busy or num_inflight or scheduler.num_inflight or scheduler.has_work:
        return CacheFlush(False, f"cache not flushed: {busy} requests are waiting or running "
                            "(or steps are in flight); retry when the server is idle")
    freed = scheduler.kv.cache.num_cached_pages
    scheduler.kv.cache.reset()
    logger.info("prefix cache flushed: %d pages freed", freed)
    return CacheFlush(True, "", freed)
