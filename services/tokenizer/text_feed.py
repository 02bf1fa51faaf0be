"""A front door's one subscription to the detokenizer, shared by its replicas' Routers.

With data parallelism the front door holds a Router per replica (`replicas.py`), all fed by
the one detokenizer. Each delta crosses the wire once: the feed hands it to the Router that
submitted its request, found by request id in one dict (a lone Router takes the batch whole).

Invariants:
- At most one subscription is open at a time; a `FeedConnection` stands for it, and is lost
  exactly once, when it breaks or the feed stops. A Router serves (submits) only inside one
  connection: its deltas cannot have gone out before the subscription that reads them.
- `owner(rid)` is the Router that claimed `rid` and has not released it: a Router claims a
  request id when it takes the request and releases it whenever the request leaves its live
  set (finish, abort, failure). A delta of an id nobody holds is dropped.
- Losing a connection ends every Router's connection with UnavailableError, so every live
  request of every replica fails (their deltas may be lost) and readiness drops until the
  feed is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import NoReturn, Protocol

from radixmesh.services.tokenizer.reconnect import keep_connected
from radixmesh.shared.errors import UnavailableError
from radixmesh.shared.requests import TextDelta


class TextSubscription(Protocol):
    def __aiter__(self) -> AsyncIterator[list[TextDelta]]: ...
    def cancel(self) -> None: ...


class DetokenizerLink(Protocol):
    """The feed's view of the detokenizer. Every failure is raised as UnavailableError."""

    async def greet_detokenizer(self) -> None: ...  # the handshake; HandshakeError on a mismatch
    async def open_subscription(self) -> TextSubscription: ...  # acknowledged: misses nothing


class DeltaSink(Protocol):
    """A Router, as the feed sees it."""

    def route(self, deltas: Sequence[TextDelta]) -> None: ...
    def take(self, delta: TextDelta, now: float) -> None: ...


class FeedConnection:
    """One open subscription, until it is lost."""

    def __init__(self) -> None:
        self._lost = asyncio.Event()
        self.reason = ""

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def lose(self, reason: str) -> None:
        if not self._lost.is_set():
            self.reason = reason
            self._lost.set()

    async def wait_lost(self) -> NoReturn:
        """Raises UnavailableError once the subscription is lost."""
        await self._lost.wait()
        raise UnavailableError(self.reason)


class TextFeed:
    def __init__(self, link: DetokenizerLink, retry_delay: float = 0.1,
                 max_retry_delay: float = 1.0) -> None:
        self._link = link
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._sinks: list[DeltaSink] = []
        self._owners: dict[str, DeltaSink] = {}
        self._current: FeedConnection | None = None
        self._up = asyncio.Event()  # set exactly while _current is open
        # Counted for the tests and benchmarks: the deltas that crossed the wire, and (with
        # several replicas) those nobody here held (late ones, or another front door's).
        self.deltas_received = 0
        self.deltas_unclaimed = 0

    # ---- who holds what ------------------------------------------------------------------

    def attach(self, sink: DeltaSink) -> None:
        self._sinks.append(sink)

    def claim(self, rid: str, sink: DeltaSink) -> None:
        self._owners[rid] = sink

    def release(self, rid: str) -> None:
        self._owners.pop(rid, None)

    def release_all(self, rids: Iterable[str]) -> None:
        for rid in rids:
            self._owners.pop(rid, None)

    def owner(self, rid: str) -> DeltaSink | None:
        return self._owners.get(rid)

    # ---- the subscription ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def connection(self) -> FeedConnection:
        """The open subscription, once there is one."""
        await self._up.wait()
        assert self._current is not None  # set and cleared with _up
        return self._current

    async def run(self) -> NoReturn:
        """Subscribes and dispatches until cancelled, subscribing again after failures."""
        subscription: TextSubscription | None = None

        async def subscribe() -> None:
            nonlocal subscription
            await self._link.greet_detokenizer()
            subscription = await self._link.open_subscription()

        async def serve() -> None:
            assert subscription is not None  # `subscribe` succeeded
            await self._serve(subscription)

        await keep_connected("detokenizer", subscribe, serve, self._lose, self._retry_delay,
                             self._max_retry_delay)

    async def _serve(self, subscription: TextSubscription) -> None:
        self._current = FeedConnection()
        self._up.set()
        try:
            async for deltas in subscription:
                self.dispatch(deltas)
        finally:
            subscription.cancel()
        raise UnavailableError("the detokenizer ended the subscription")

    def _lose(self, reason: str) -> None:
        self._up.clear()
        if self._current is not None:
            self._current.lose(f"lost the detokenizer: {reason}")
            self._current = None

    def dispatch(self, deltas: Sequence[TextDelta]) -> None:
        """Hands each delta to the Router that holds its request."""
        self.deltas_received += len(deltas)
        if len(self._sinks) == 1:  # the single-replica path: no lookup here
            self._sinks[0].route(deltas)
            return
        now = time.perf_counter()
        owners = self._owners
        for delta in deltas:
            sink = owners.get(delta.rid)
            if sink is None:
                self.deltas_unclaimed += 1
            else:
                sink.take(delta, now)
