"""The scheduler's step loop: plans out to the worker, results back, token batches onward.

Pipelined (design §3): while the worker executes plan N, plan N+1 is already on its way, so
the worker never waits for the scheduler between steps. The loop knows its peers only as
async callables, so it runs the same against the gRPC streams and against an in-process
worker in tests.

A worker may be lost and come back (issue 17): a peer callable that raises WorkerLostError
hands the loss to `on_worker_lost` and the loop goes on without a worker (requests still
arrive, are refused or wait, and what they produce is published) until `attach_worker` gives
it the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from radixmesh.services.scheduler.request_spans import RequestSpans
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.shared.errors import InvalidRequestError, http_status
from radixmesh.shared.mesh_protocol import unavailable_finish
from radixmesh.shared.requests import FinishKind, FinishReason, TokenDelta, TokenizedRequest, Usage
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder
from radixmesh.shared.step import StepPlan, StepResult
from radixmesh.shared.token_batch import PROMPT_CONTEXT_TOKENS, DetokenizeRegistration, TokenBatch
from radixmesh.shared.trace_context import NO_TRACE, TraceContext

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LoopStats:
    num_steps: int = 0
    num_pipelined_steps: int = 0  # plans sent while an earlier plan's result was outstanding
    max_inflight: int = 0


SendPlan = Callable[[StepPlan], Awaitable[None]]
ReceiveResult = Callable[[], Awaitable[StepResult]]
PublishBatch = Callable[[TokenBatch], Awaitable[None]]


class WorkerLostError(ConnectionError):
    """The worker's stream broke, ended or produced no result in time: what it held is gone."""


class SchedulerLoop:
    """Owns the Scheduler's calling order; every method runs on one event loop.

    Invariants:
    - at most `max_inflight` plans are sent and not yet answered; results are processed in
      the order their plans were sent;
    - each step's deltas go out as one TokenBatch, together with whatever submissions and
      aborts produced since the previous batch;
    - every request the loop accepts or rejects gets a registration and, eventually, exactly
      one delta carrying a finish (a rejection finishes at once with FinishKind.ABORT);
    - with nothing to run, the loop sleeps on an event that submissions set: no polling.
    """

    def __init__(self, scheduler: Scheduler, send_plan: SendPlan, receive_result: ReceiveResult,
                 publish: PublishBatch, max_inflight: int = 2,
                 on_progress: Callable[[], None] | None = None,
                 recorder: SpanRecorder = DISABLED) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.scheduler = scheduler
        self.max_inflight = max_inflight
        # Told after requests arrive and after each result: the hierarchical cache's link
        # looks for prefetches and stores to start then.
        self._on_progress = on_progress
        self.stats = LoopStats()
        self.spans = RequestSpans(recorder, scheduler.running)
        self._recorder = recorder
        self._send_plan: SendPlan | None = send_plan  # None while no worker is attached
        self._receive_result = receive_result
        self._publish = publish
        # Set while a peer the mesh needs is lost: new requests fail with it at once.
        self.unavailable: str | None = None
        # Told of a WorkerLostError from a peer callable; unset, `run` lets it propagate.
        self.on_worker_lost: Callable[[WorkerLostError], None] | None = None
        self._generation = 0  # counts worker detachments: results of an older one are void
        self._inflight = 0
        self._outbox = TokenBatch()
        self._wakeup = asyncio.Event()
        self._owners: dict[str, object] = {}  # live rid -> the submitter that sent it
        self._streaming: set[str] = set()     # live rids whose first delta went out

    @property
    def num_inflight(self) -> int:
        return self._inflight

    # ---- requests in ---------------------------------------------------------------------

    def submit(self, requests: Sequence[TokenizedRequest], aborts: Sequence[str] = (),
               owner: object = None) -> None:
        """Queues new requests and aborts; a request the scheduler refuses finishes with an
        abort carrying the reason. A rid that is still live is ignored (and logged)."""
        for request in requests:
            if request.rid in self._owners:
                logger.error("request id %r is already live: ignoring the duplicate", request.rid)
                continue
            self._register(request.rid, request.sampling.stop, request.input_ids, request.trace)
            if self.unavailable is not None:  # fail fast: no worker or nobody to read output
                self._finish_unscheduled(request.rid, len(request.input_ids),
                                         unavailable_finish(self.unavailable))
                continue
            try:
                check_request(request, self.scheduler.worker.vocab_size)
                self.scheduler.add_request(request)
            except Exception as error:  # a bad request must never take the scheduler down
                logger.info("rejected %s: %s", request.rid, error)
                self._finish_unscheduled(request.rid, len(request.input_ids),
                                         FinishReason(FinishKind.ABORT, message=str(error),
                                                      status_code=http_status(error)))
                self.spans.rejected(request, str(error))
                continue
            self._owners[request.rid] = owner
            self.spans.arrived(request, len(self.scheduler.waiting))
        for rid in aborts:
            self.abort(rid)
        self._progressed()
        self._wakeup.set()

    def wake(self) -> None:
        """Plans again soon: something outside the loop made work possible."""
        self._wakeup.set()

    def _progressed(self) -> None:
        if self._on_progress is not None:
            self._on_progress()

    def reject(self, rid: str, input_ids: Sequence[int], message: str) -> None:
        """Finishes a request that never reached the scheduler (it could not be decoded)."""
        if rid in self._owners:
            logger.error("cannot reject live request %r: %s", rid, message)
            return
        self._register(rid, (), input_ids)
        # The request's own fault: the front door answers 400 / INVALID_ARGUMENT.
        self._finish_unscheduled(rid, len(input_ids), FinishReason(
            FinishKind.ABORT, message=message, status_code=HTTPStatus.BAD_REQUEST))
        self._wakeup.set()

    def abort(self, rid: str, finish: FinishReason | None = None) -> None:
        delta = self.scheduler.abort(rid, finish)
        if delta is not None:
            self._collect([delta])
            self._wakeup.set()

    def abort_owned_by(self, owner: object) -> None:
        """Aborts every live request `owner` submitted (its stream to us has closed)."""
        for rid in [rid for rid, who in self._owners.items() if who is owner]:
            self.abort(rid)

    # ---- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Runs until cancelled, or until a peer callable raises (a WorkerLostError only
        while `on_worker_lost` is unset)."""
        while True:
            # Cleared before planning, so a submission arriving during any await of the turn
            # is never missed: planning sees everything submitted before this point.
            self._wakeup.clear()
            generation = self._generation
            try:
                progressed = await self.turn()
            except WorkerLostError as error:
                if self.on_worker_lost is None:
                    raise
                # A stale error (the stream it came from was detached meanwhile) is dropped.
                if generation == self._generation and self._send_plan is not None:
                    self.on_worker_lost(error)  # first: it may count what is running
                    self.detach_worker(str(error))
                continue
            if not progressed:
                await self._wakeup.wait()

    async def turn(self) -> bool:
        """One turn: fill the pipeline, publish the outbox, process the oldest result. False,
        with no result processed, when no plan is in flight. `run` repeats it; the in-process
        engine calls it once per step."""
        await self._fill_pipeline()
        # Published only after the next plan is out: the worker is busy meanwhile.
        await self.flush()
        if self._inflight == 0:
            return False
        generation = self._generation
        result = await self._receive_result()
        if generation != self._generation:  # the worker was detached meanwhile: stale
            return True
        self._inflight -= 1
        self.spans.completed(result.step_id)  # before its deltas: a first token ends prefill
        self._collect(self.scheduler.process_result(result))
        self._progressed()
        return True

    async def _fill_pipeline(self) -> None:
        while (send := self._send_plan) is not None and self._inflight < self.max_inflight:
            plan = self.scheduler.schedule()
            if plan is None:
                return
            if self._inflight:
                self.stats.num_pipelined_steps += 1
            self._inflight += 1
            self.stats.num_steps += 1
            self.stats.max_inflight = max(self.stats.max_inflight, self._inflight)
            self.spans.planned(plan)
            await send(plan)

    async def flush(self) -> None:
        """Publishes the outbox, if anything is in it, as one TokenBatch."""
        if not self._outbox:
            return
        batch, self._outbox = self._outbox, TokenBatch()
        await self._publish(batch)

    # ---- a worker lost and found -----------------------------------------------------------

    def detach_worker(self, reason: str) -> bool:
        """The worker is gone, and what it held with it: every running request ends with
        UNAVAILABLE (its pages freed) and the plans in flight are forgotten. Waiting requests
        stay queued; new ones fail at once until a worker is attached. False (nothing done)
        when no worker is attached."""
        if self._send_plan is None:
            return False
        self._send_plan = None
        self._inflight = 0
        self._generation += 1
        self.unavailable = self.unavailable or reason
        self._fail(list(self.scheduler.running), reason)
        return True

    def attach_worker(self, scheduler: Scheduler, send_plan: SendPlan,
                      receive_result: ReceiveResult) -> None:
        """A (new) worker and the Scheduler sized for it (`recovery.py`) replace the old
        ones; only after `detach_worker`, so nothing is in flight."""
        assert self._send_plan is None and self._inflight == 0, "detach the old worker first"
        self.scheduler = scheduler
        self.spans = RequestSpans(self._recorder, scheduler.running)
        self._send_plan, self._receive_result = send_plan, receive_result
        self._wakeup.set()

    def set_progress_hook(self, on_progress: Callable[[], None] | None) -> None:
        """What `on_progress` of the constructor is, for the current Scheduler's links."""
        self._on_progress = on_progress

    def fail_waiting(self, reason: str) -> None:
        """Queued requests waited long enough for a worker: they fail with UNAVAILABLE."""
        self._fail([req.rid for req in self.scheduler.waiting], reason)

    def fail_all(self, reason: str) -> None:
        """Nobody can read any output (the detokenizer is lost): every request ends, its pages
        freed, and what was meant for the lost peer is dropped, not sent to its successor."""
        self._fail([*self.scheduler.running, *(req.rid for req in self.scheduler.waiting)],
                   reason)
        self._outbox = TokenBatch()
        self._owners.clear()
        self._streaming.clear()

    def _fail(self, rids: Sequence[str], reason: str) -> None:
        finish = unavailable_finish(reason)
        for rid in rids:
            self.abort(rid, finish)

    # ---- bookkeeping -----------------------------------------------------------------------

    def _register(self, rid: str, stop: Sequence[str], input_ids: Sequence[int],
                  trace: TraceContext = NO_TRACE) -> None:
        self._outbox.registrations.append(DetokenizeRegistration(
            rid, tuple(stop), tuple(input_ids[-PROMPT_CONTEXT_TOKENS:]), len(input_ids), trace))

    def _finish_unscheduled(self, rid: str, num_prompt_tokens: int,
                            finish: FinishReason) -> None:
        self._outbox.deltas.append(TokenDelta(rid, [], finish, Usage(num_prompt_tokens, 0, 0)))

    def _collect(self, deltas: Sequence[TokenDelta]) -> None:
        """Adds deltas to the outbox, noting the cached prompt tokens on each first delta."""
        for delta in deltas:
            rid = delta.rid
            if rid not in self._streaming:
                self._outbox.num_cached_tokens[rid] = self._num_cached_tokens(delta)
                self._streaming.add(rid)
            if delta.finish is not None:
                self._streaming.discard(rid)
                self._owners.pop(rid, None)
                self.spans.finished(delta)
            self._outbox.deltas.append(delta)

    def _num_cached_tokens(self, delta: TokenDelta) -> int:
        if delta.usage is not None:
            return delta.usage.cached_tokens
        req = self.scheduler.running.get(delta.rid)
        return 0 if req is None else req.num_cached_prompt_tokens


def check_request(request: TokenizedRequest, vocab_size: int) -> None:
    """What the worker relies on, checked again at the scheduler's edge: the tokenizer should
    have refused such a request, but one id outside the vocabulary would fail a whole step."""
    if not request.input_ids:
        raise InvalidRequestError("prompt", "must not be empty")
    bad = next((i for i in request.input_ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError("input_ids", f"{bad} is outside the vocabulary [0, {vocab_size})")
    request.sampling.validate(vocab_size)  # the shared validator; the wire decoder checks nothing
