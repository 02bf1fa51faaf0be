"""How the page index lies in Redis: key names, values, and reading a lookup's replies. The
layout is `shared/page_index_layout.py`'s (the router reads it too); here, what a lookup makes
of one node's replies.

Keys (`P` the --hicache-redis-key-prefix, `N` the node id, `K` the page key in hex):
- `P{N}:hb`: the node's heartbeat, "EPOCH ADDRESS", with a short TTL renewed every few
  seconds. A node is live, in the epoch it names, only while this exists.
- `P{N}:p:K`: the entry of page K on node N, "EPOCH TIER ADDRESS", with the entry TTL.
- `Pnodes`: a set of the node ids that ever beat, so a lookup knows whom to ask.

The hash tag `{N}` puts all of one node's keys in one Redis Cluster slot, so a lookup asks each
node with one MGET (heartbeat first, then the chain's entries), never a cross-slot command and
never one command per page; a Lua script touches one key. Values are space-separated: node ids,
prefixes and addresses may hold no space or brace (flags.py).
"""

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
