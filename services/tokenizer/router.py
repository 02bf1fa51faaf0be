"""The front door's core: validated requests out to the scheduler, text deltas back to clients.

Plain asyncio, no gRPC: a replica's scheduler is reached through a `SchedulerLink`
(`mesh_link.py` has the gRPC one), and text deltas come from a `TextFeed` (`text_feed.py`): the
front door's one detokenizer subscription, shared by the Routers of its data-parallel
replicas, or a Router's own where it is alone. Invariants:
- Every live request has exactly one queue, fed in order, ending with one finishing delta or
  one exception; after that its id is forgotten and later deltas for it are dropped. A request
  is claimed in the feed for exactly as long as it is live here, so the feed hands each of its
  deltas to this Router alone, once, in the order the detokenizer sent them.
- New requests and aborts go out in batches: everything submitted while the sender task was
  waiting leaves in one RequestBatch (so at most one batch per event-loop tick).
- A request the front door ends itself (client abort, disconnect, stop string) is also
  aborted at the scheduler, so its pages are freed at once.
- A request belongs to the API key that submitted it (its digest); a client's abort by id
  (`abort_as`) ends only its own requests.
- Ready (health, `/health`, new requests taken) exactly while the scheduler link and the
  feed's subscription are up and the scheduler reports SERVING; a request that a lost peer
  took down (`unavailable_finish`) ends with UnavailableError, as every live request does
  when a link breaks. The scheduler link breaking fails this Router's requests only; the
  feed's subscription breaking fails those of every Router on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import NoReturn, Protocol, cast

from radixmesh.services.tokenizer.reconnect import keep_connected
from radixmesh.services.tokenizer.text_feed import DetokenizerLink, TextFeed
from radixmesh.shared.api_keys import Owner
from radixmesh.shared.errors import UnavailableError
from radixmesh.shared.front_door.delta_merge import HeldDeltas
from radixmesh.shared.front_door.live_request import LiveRequest, RequestStream
from radixmesh.shared.front_door.live_requests import LiveRequests
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.front_door.request_builder import RequestBody, RequestBuilder
from radixmesh.shared.mesh_info import CacheFlush, ModelInfo, SchedulerLoad
from radixmesh.shared.mesh_protocol import unavailable_reason
from radixmesh.shared.requests import TextDelta, TokenizedRequest
from radixmesh.shared.tokenizer import TextTokenizer
from radixmesh.shared.trace_context import NO_TRACE, TraceContext

logger = logging.getLogger(__name__)


class SubmitStream(Protocol):
    async def send(self, requests: Sequence[TokenizedRequest], aborts: Sequence[str]) -> None: ...
    async def wait_closed(self) -> None: ...
    def cancel(self) -> None: ...


class SchedulerLink(Protocol):
    """The router's view of its replica's scheduler. Every failure is raised as
    UnavailableError."""

    async def greet(self) -> None: ...  # the handshake; HandshakeError on a mismatch
    async def get_info(self) -> ModelInfo: ...
    async def get_load(self) -> SchedulerLoad: ...
    async def flush_cache(self) -> CacheFlush: ...
    def watch_serving(self) -> AsyncIterator[bool]: ...  # the scheduler's readiness
    def open_submit(self) -> SubmitStream: ...


class MeshLink(SchedulerLink, DetokenizerLink, Protocol):
    """A scheduler and the detokenizer: what a Router without a shared feed reads."""


class Router:
    def __init__(self, link: SchedulerLink | MeshLink, tokenizer: TextTokenizer | None,
                 metrics: FrontDoorMetrics | None = None, retry_delay: float = 0.1,
                 max_retry_delay: float = 1.0,
                 allow_special_tokens_in_content: bool = False,
                 feed: TextFeed | None = None, stream_interval: int = 1) -> None:
        """`feed`: the front door's shared subscription, which its owner runs; None: one of
        this Router's own over `link` (then a MeshLink), run by `run`. `stream_interval`: the
        config's --stream-interval (`delta_merge.py`)."""
        self._stream_interval = stream_interval
        self._link = link
        self._owns_feed = feed is None
        self._feed = feed if feed is not None else TextFeed(
            cast(MeshLink, link), retry_delay, max_retry_delay)
        self._feed.attach(self)
        self._tokenizer = tokenizer
        self._allow_special_tokens = allow_special_tokens_in_content
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self.info: ModelInfo | None = None
        self._builder: RequestBuilder | None = None
        self._live: LiveRequests[LiveRequest] = LiveRequests(metrics)
        self._outbox: dict[str, TokenizedRequest] = {}  # not sent yet
        self._outbox_aborts: list[str] = []
        self._wakeup = asyncio.Event()
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()  # the complement of _ready
        self._lost.set()
        self._connected = False  # the streams are open
        self._scheduler_serving = False  # as its health last said

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def num_live(self) -> int:
        return len(self._live)

    def holds(self, rid: str) -> bool:
        """Whether `rid` is live here."""
        return rid in self._live

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def wait_disconnected(self) -> None:
        await self._lost.wait()

    def _update_ready(self) -> None:
        if self._connected and self._scheduler_serving:
            self._lost.clear()
            self._ready.set()
        else:
            self._ready.clear()
            self._lost.set()

    async def run(self) -> None:
        """Connects to the mesh and serves until cancelled, reconnecting after failures (and
        runs its own feed, if it has one).

        Requests live while a connection breaks end with UnavailableError: the scheduler
        may have lost them, so the front door does not pretend they go on.
        """
        if not self._owns_feed:
            await self._run_connections()
            return
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._feed.run())
            tasks.create_task(self._run_connections())

    async def _run_connections(self) -> NoReturn:
        await keep_connected("mesh", self._connect, self._serve_connection, self._disconnected,
                             self._retry_delay, self._max_retry_delay)

    def _disconnected(self, _reason: str) -> None:
        self._connected = self._scheduler_serving = False
        self._update_ready()
        self._feed.release_all([live.rid for live in self._live])
        self._live.fail_all("lost the connection to the mesh")
        self._outbox, self._outbox_aborts = {}, []

    async def _connect(self) -> None:
        await self._link.greet()
        info = await self._link.get_info()
        self.info = info
        self._builder = RequestBuilder(self._tokenizer, info.vocab_size, info.context_len,
                                       info.max_total_tokens, self._allow_special_tokens)

    async def _serve_connection(self) -> None:
        # The subscription first: a delta of a request sent before it would be lost.
        subscription = await self._feed.connection()
        submit = self._link.open_submit()
        tasks = [asyncio.ensure_future(coro) for coro in (
            subscription.wait_lost(), self._send(submit), submit.wait_closed(),
            self._follow_serving(self._link.watch_serving()))]
        self._connected = True
        self._update_ready()
        logger.info("connected to the mesh: model %s", self.info.model_id)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the failure that ended the connection
            raise UnavailableError("a mesh stream ended")
        finally:
            for task in tasks:
                task.cancel()
            submit.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow_serving(self, statuses: AsyncIterator[bool]) -> None:
        """Mirrors the scheduler's readiness. Requests it holds meanwhile are its to end (it
        fails those a lost peer took down); new ones are refused here until it is back, and
        then the model info is read again: a new worker may have another pool size."""
        async for serving in statuses:
            if serving and not self._scheduler_serving:
                await self._connect()
            if serving != self._scheduler_serving:
                logger.log(logging.INFO if serving else logging.WARNING, "the scheduler is %s",
                           "SERVING" if serving else "NOT SERVING: new requests are refused")
            self._scheduler_serving = serving
            self._update_ready()
        raise UnavailableError("the scheduler's health watch ended")

    # ---- requests in -----------------------------------------------------------------------

    def build(self, rid: str | None, body: Mapping | RequestBody,
              trace: TraceContext = NO_TRACE) -> TokenizedRequest:
        """Validates and tokenizes a request body; raises InvalidRequestError naming the field.

        An empty or missing `rid` gets a fresh one; a client's must not be live already.
        """
        if self._builder is None or self.info is None:
            raise UnavailableError("the front door is not connected to the mesh yet")
        rid = self._live.new_rid(rid)
        return dataclasses.replace(self._builder.build(rid, body), trace=trace)

    def submit(self, request: TokenizedRequest, owner: Owner = None) -> RequestStream:
        """Queues a built request for the scheduler; its deltas arrive on the returned stream.
        `owner` (the caller's key digest) is who may abort it by id."""
        if not self.ready:
            raise UnavailableError("the front door is not connected to the mesh")
        live = self._live.add(LiveRequest(request.rid, len(request.input_ids), owner))
        if self._stream_interval > 1:
            live.held = HeldDeltas(self._stream_interval)
        self._feed.claim(request.rid, self)
        self._outbox[request.rid] = request
        self._wakeup.set()
        return RequestStream(live, self.abort)

    def abort_as(self, caller: Owner, rid: str) -> bool:
        """A client's abort by id: only the request's owner may (anyone where no key is
        configured); PermissionDeniedError for a live request of another key. False if the
        id is not live here."""
        return self._live.check_owner(caller, rid) and self.abort(rid)

    def abort(self, rid: str) -> bool:
        """Ends a live request now (its stream gets a final "abort" delta) and frees it in
        the mesh. False if the id is not live here."""
        if self._live.abort(rid) is None:
            return False
        self._feed.release(rid)
        self._cancel_in_mesh(rid)
        return True

    async def get_load(self) -> SchedulerLoad:
        return await self._link.get_load()

    async def flush_cache(self) -> CacheFlush:
        """Empties the mesh's prefix cache; refused while requests are live, here (the
        scheduler may not have heard of them yet) or at the scheduler."""
        return self._live.busy_refusal() or await self._link.flush_cache()

    def _cancel_in_mesh(self, rid: str) -> None:
        if self._outbox.pop(rid, None) is None:  # already sent: the scheduler must hear of it
            self._outbox_aborts.append(rid)
            self._wakeup.set()

    async def _send(self, submit: SubmitStream) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            requests, aborts = list(self._outbox.values()), self._outbox_aborts
            self._outbox, self._outbox_aborts = {}, []
            if requests or aborts:
                await submit.send(requests, aborts)

    # ---- deltas out ------------------------------------------------------------------------

    def route(self, deltas: Sequence[TextDelta]) -> None:
        """Hands each delta to its request's queue; deltas of unknown ids are dropped."""
        now = time.perf_counter()
        for delta in deltas:
            self.take(delta, now)

    def take(self, delta: TextDelta, now: float) -> None:
        """One delta to its request's queue (`now`: when its batch arrived); dropped if its
        request is not live here."""
        live = self._live.get(delta.rid)
        if live is None:
            return
        self._live.count_tokens(live, delta, now)
        if delta.finish is None:
            live.push(delta)  # queued, or held for the next --stream-interval update
            return
        self._live.pop(delta.rid)
        self._feed.release(delta.rid)
        if delta.ends_on_stop_string:
            self._cancel_in_mesh(delta.rid)
        reason = unavailable_reason(delta.finish)
        if reason is not None:  # a peer was lost: an error, not a finish
            if delta.text or delta.token_ids:
                live.push(dataclasses.replace(delta, finish=None, usage=None))
            live.put_error(UnavailableError(reason))
            return
        self._live.finish(live, delta)
