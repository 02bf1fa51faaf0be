"""What a page index lookup makes of one node's replies. The layout itself (key names,
values, the epoch-checked delete) is `shared/page_index_layout.py`'s, which the router reads
too; it is re-exported here for the index's writer."""

from __future__ import annotations

from collections.abc import Sequence

from radixmesh.services.hicache.page_index.base import NO_RUN, RemoteRun
from radixmesh.shared.page_index_layout import (  # the layout itself lives in shared/
    DELETE_IF_EPOCH,
    TIER_STORAGE,
    RedisLayout,
    entry_value,
    heartbeat_value,
    leading_run,
)

__all__ = ["DELETE_IF_EPOCH", "TIER_STORAGE", "RedisLayout", "best_run", "entry_value",
           "heartbeat_value", "node_run"]


def node_run(node_id: str, replies: Sequence[str | None]) -> RemoteRun:
    """What one node's MGET (heartbeat, then one entry per page) says: its leading run in the
    epoch its heartbeat names. No heartbeat (dead) or another epoch (restarted): nothing."""
    run = leading_run(replies)
    return RemoteRun(node_id, run.address, run.epoch, run.num_pages) if run.num_pages else NO_RUN


def best_run(runs: Sequence[RemoteRun]) -> RemoteRun:
    """The longest run; ties go to the first (the callers order nodes by id)."""
    best = NO_RUN
    for run in runs:
        if run.num_pages > best.num_pages:
            best = run
    return best
