"""The scheduler's queue of requests not running: new arrivals and retracted requests.

Keyed by request id, so asking whether an id waits, and taking one request out (an abort),
cost O(1) however long the queue grows (a burst of a thousand arrivals must not cost a
million comparisons). Iteration is in the order requests joined; the admission policy
(`policy.order_waiting`) decides the order they leave in.

Invariant: every request appears once, under its own `rid`; a request is in here exactly
while its status is WAITING (the scheduler keeps that: arrival, retraction and carry-over on
a rebuild add; admission, abort and failure remove).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from radixmesh.services.scheduler.request import SchedReq


class WaitingQueue:
    def __init__(self) -> None:
        self._by_rid: dict[str, SchedReq] = {}  # insertion-ordered: the order of joining

    def __len__(self) -> int:
        return len(self._by_rid)

    def __bool__(self) -> bool:
        return bool(self._by_rid)

    def __iter__(self) -> Iterator[SchedReq]:
        return iter(self._by_rid.values())

    def __contains__(self, rid: object) -> bool:
        return rid in self._by_rid

    def append(self, req: SchedReq) -> None:
        """Queues `req` last; its id must not be waiting already."""
        if req.rid in self._by_rid:
            raise ValueError(f"request {req.rid!r} is already waiting")
        self._by_rid[req.rid] = req

    def pop(self, rid: str) -> SchedReq | None:
        """Takes the request `rid` out; None if it is not waiting."""
        return self._by_rid.pop(rid, None)

    def remove_all(self, reqs: Iterable[SchedReq]) -> None:
        """Takes out `reqs` (admitted ones), each of which must be waiting."""
        for req in reqs:
            del self._by_rid[req.rid]

    def clear(self) -> None:
        self._by_rid.clear()
