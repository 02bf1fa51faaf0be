"""The requests a front-door core holds, by id: what the mesh's `Router` and the router
service's `NodeSet` do alike with them (ids checked, owners checked on abort, tokens counted,
finishes and failures queued, front-door metrics kept).

Invariants:
- An id is here from `add` until its finishing delta or its error was queued (`finish`,
  `end`, `fail`, `abort`, `fail_all` take it out); an id here is never added again.
- Every request taken out gets exactly one last item on its queue: a finishing delta with
  usage, or an exception.
- `check_owner` lets a caller end only the requests its key started (anyone's where no key
  is configured).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Generic, TypeVar

from radixmesh.shared.api_keys import Owner, PermissionDeniedError, may_abort
from radixmesh.shared.errors import InvalidRequestError, UnavailableError
from radixmesh.shared.front_door.live_request import LiveRequest
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.mesh_info import CacheFlush
from radixmesh.shared.requests import FinishKind, FinishReason, TextDelta
from radixmesh.shared.text_checks import MAX_RID_LENGTH

Live = TypeVar("Live", bound=LiveRequest)  # a core may keep more per request (a subclass)


class LiveRequests(Generic[Live]):
    def __init__(self, metrics: FrontDoorMetrics | None = None) -> None:
        self._metrics = metrics
        self._by_rid: dict[str, Live] = {}

    def __len__(self) -> int:
        return len(self._by_rid)

    def __contains__(self, rid: object) -> bool:
        return rid in self._by_rid

    def __iter__(self) -> Iterator[Live]:
        return iter(self._by_rid.values())

    def get(self, rid: str) -> Live | None:
        return self._by_rid.get(rid)

    # ---- in ----------------------------------------------------------------------------------

    def new_rid(self, rid: str | None) -> str:
        """The id a request is built with: the client's, checked (InvalidRequestError when too
        long or live here), else a fresh one (122 random bits: nobody can guess another's)."""
        rid = rid or uuid.uuid4().hex
        if len(rid) > MAX_RID_LENGTH:
            raise InvalidRequestError("rid", f"must be at most {MAX_RID_LENGTH} characters")
        self.check_free(rid)
        return rid

    def check_free(self, rid: str) -> None:
        if rid in self._by_rid:
            raise InvalidRequestError("rid", f"request id {rid!r} is already in use")

    def add(self, live: Live) -> Live:
        self.check_free(live.rid)
        self._by_rid[live.rid] = live
        return live

    def check_owner(self, caller: Owner, rid: str) -> bool:
        """Whether `rid` is live here; PermissionDeniedError when `caller` may not end it."""
        live = self._by_rid.get(rid)
        if live is None:
            return False
        if not may_abort(live.owner, caller):
            raise PermissionDeniedError(f"request {rid!r} was started with another API key")
        return True

    def busy_refusal(self) -> CacheFlush | None:
        """A cache flush's refusal while requests are live here (the mesh may not have heard
        of them yet); None when idle."""
        if not self._by_rid:
            return None
        return CacheFlush(False, f"cache not flushed: {len(self._by_rid)} requests are "
                          "running; retry when the server is idle")

    # ---- out ---------------------------------------------------------------------------------

    def count_tokens(self, live: LiveRequest, delta: TextDelta, now: float | None = None) -> None:
        """Counts a delta's tokens for the request's usage, TTFT and the metrics."""
        if not delta.token_ids:
            return
        now = time.perf_counter() if now is None else now
        live.num_output_tokens += len(delta.token_ids)
        if live.first_token_at is None:
            live.first_token_at = now
        if self._metrics is not None:
            since_previous = None if live.last_token_at is None else now - live.last_token_at
            self._metrics.on_tokens(len(delta.token_ids), since_previous, now - live.created)
        live.last_token_at = now

    def pop(self, rid: str) -> Live | None:
        """Takes `rid` out; its caller queues its last item (`finish` or an exception)."""
        return self._by_rid.pop(rid, None)

    def finish(self, live: LiveRequest, delta: TextDelta) -> None:
        """Queues the finishing delta of a request taken out (usage so far if it has none)."""
        assert delta.finish is not None
        delta = live.with_held(delta)  # deltas held for --stream-interval go out with it
        if delta.usage is None:
            delta = dataclasses.replace(delta, usage=live.usage_so_far())
        if self._metrics is not None:
            self._metrics.on_finish(delta.finish, delta.usage, time.perf_counter() - live.created)
        live.queue.put_nowait(delta)

    def end(self, delta: TextDelta) -> Live | None:
        """Takes the delta's request out and queues `delta` as its finish; None (nothing
        queued) if it is not live."""
        live = self._by_rid.pop(delta.rid, None)
        if live is not None:
            self.finish(live, delta)
        return live

    def abort(self, rid: str) -> Live | None:
        """Ends `rid` now with an "abort" finish; None if it is not live. The caller stops
        what serves it."""
        return self.end(TextDelta(rid, "", [], FinishReason(FinishKind.ABORT,
                                                           message="aborted by the client")))

    def fail(self, rid: str, error: BaseException) -> bool:
        """Ends `rid` with `error`; False (nothing queued) if it is not live."""
        live = self._by_rid.pop(rid, None)
        if live is not None:
            live.put_error(error)
        return live is not None

    def fail_all(self, reason: str) -> None:
        """Ends every request with UnavailableError(`reason`): what held them went away."""
        live, self._by_rid = self._by_rid, {}
        for request in live.values():
            request.put_error(UnavailableError(reason))
