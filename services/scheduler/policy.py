"""Orders the waiting queue before admission."""

from __future__ import annotations

from collections.abc import Collection

from radixmesh.services.scheduler.kv_manager import KVManager
from radixmesh.services.scheduler.request import SchedReq

# Prefix matching every waiting request costs O(total prompt tokens); past this queue length
# longest-prefix-match falls back to arrival order, as SGLang does.
LPM_MAX_QUEUE = 128


def order_waiting(waiting: Collection[SchedReq], policy: str, kv: KVManager) -> list[SchedReq]:
    """Retracted requests go first under every policy: they already waited once."""
    if policy == "lpm" and len(waiting) <= LPM_MAX_QUEUE:
        match_len = {req.rid: kv.match(req).num_tokens for req in waiting}
        key = lambda req: (not req.admitted_once, -match_len[req.rid], req.arrival)  # noqa: E731
    else:
        key = lambda req: (not req.admitted_once, req.arrival)  # noqa: E731
    return sorted(waiting, key=key)
