"""One client's request while it lives at the front door, and the stream its handler reads.

The router owns `LiveRequest`s and feeds their queues; a gRPC or HTTP handler holds the
matching `RequestStream` and iterates it. Leaving the stream's `async with` block before the
last delta (client gone, handler cancelled) aborts the request through the mesh, so a
disconnected client never keeps pages busy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from radixmesh.shared.api_keys import Owner
from radixmesh.shared.completion import TextCompletion
from radixmesh.shared.front_door.delta_merge import HeldDeltas, merge_deltas
from radixmesh.shared.requests import TextDelta, Usage

__all__ = ["LiveRequest", "QueueItem", "RequestStream", "merge_deltas"]

# What a queue holds: deltas in order, then either the finishing delta or an exception
# (the mesh went away) that the reader raises.
QueueItem = TextDelta | BaseException


@dataclass(slots=True)
class LiveRequest:
    """Router-side state of one request between submit and its finishing delta."""

    rid: str
    num_prompt_tokens: int
    owner: Owner = None  # the digest of the API key that started it (shared/api_keys.py)
    queue: asyncio.Queue[QueueItem] = field(default_factory=asyncio.Queue)
    created: float = field(default_factory=time.perf_counter)
    num_output_tokens: int = 0
    last_token_at: float | None = None  # None until the first token arrived
    first_token_at: float | None = None  # perf_counter() time; the request span's TTFT
    # --stream-interval N > 1: deltas wait here until the next update is due (delta_merge.py)
    held: HeldDeltas | None = None

    def push(self, delta: TextDelta) -> None:
        """Queues a delta that does not finish the request, or holds it for the next update."""
        if self.held is not None:
            delta = self.held.hold(delta)
            if delta is None:
                return
        self.queue.put_nowait(delta)

    def with_held(self, delta: TextDelta) -> TextDelta:
        """The finishing `delta`, carrying whatever deltas were still held before it."""
        held = self.held.release() if self.held is not None else None
        return delta if held is None else merge_deltas(held, delta)

    def put_error(self, error: BaseException) -> None:
        """Ends the stream with `error`, after the deltas still held (the reader gets them
        first, then the error)."""
        held = self.held.release() if self.held is not None else None
        if held is not None:
            self.queue.put_nowait(held)
        self.queue.put_nowait(error)

    def usage_so_far(self) -> Usage:
        """Usage of a request the front door ends itself (abort, stop string): the scheduler's
        cached-token count is not known here, so it reads 0."""
        return Usage(self.num_prompt_tokens, self.num_output_tokens, 0)


class RequestStream:
    """Async iterator over one request's TextDeltas; ends after the delta carrying `finish`.

    Deltas that piled up while the reader was busy come out merged into one, so a front door
    that falls behind sends fewer, larger messages instead of falling further behind; one that
    keeps up sends each delta as it comes. Raises whatever exception the router queued (e.g.
    the mesh became unavailable), after the deltas before it.
    """

    def __init__(self, live: LiveRequest, on_abandon: Callable[[str], object]) -> None:
        self.rid = live.rid
        self.num_prompt_tokens = live.num_prompt_tokens
        self.final: TextDelta | None = None  # the finishing delta, once read
        self._live = live
        self._queue = live.queue
        self._on_abandon = on_abandon
        self._finished = False
        self._deferred_error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def first_token_at(self) -> float | None:
        """When the router saw the request's first output token (perf_counter), if it did."""
        return self._live.first_token_at

    @property
    def num_output_tokens(self) -> int:
        """Output tokens the router has seen for this request so far."""
        return self._live.num_output_tokens

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> TextDelta:
        if self._finished:
            raise StopAsyncIteration
        item = self._deferred_error or await self._queue.get()
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        while item.finish is None and not self._queue.empty():
            following = self._queue.get_nowait()
            if isinstance(following, BaseException):
                self._deferred_error = following
                break
            item = merge_deltas(item, following)
        if item.finish is not None:
            self._finished = True
            self.final = item
        return item

    async def collect(self) -> TextCompletion:
        """Reads to the end: everything the request produced, its finish and usage."""
        completion = TextCompletion(self.rid)
        async for delta in self:
            completion.add(delta)
        assert completion.finished, "streams end with a finish"
        return completion

    def abandon(self) -> None:
        """Aborts the request unless it already finished; safe to call more than once."""
        if not self._finished:
            self._finished = True
            self._on_abandon(self.rid)

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.abandon()

