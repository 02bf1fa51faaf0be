"""The scheduler's spans of design §6: `queue`, one `prefill` per chunk, `decode`, and the
`hicache.load` of pages a request brought back from host memory.

Fed by the step loop at four points it already passes (a request arrives, a plan goes out,
a result comes back, a request finishes), from times taken there. Only sampled requests are
tracked, in `_live`: with tracing off or nothing sampled, each hook returns at its first
line, and no hook ever does work per token.

Times: a prefill chunk runs from the moment its plan is sent until its result is back (with
pipelining that includes the step ahead of it, which is what the request waited for); the
request's first output token is the result of its last chunk; `decode` runs from there to the
finish and is recorded once, then.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from radixmesh.services.scheduler.request import CachedTiers, SchedReq
from radixmesh.shared.requests import FinishKind, TokenDelta, TokenizedRequest
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder, now_ns
from radixmesh.shared.step import ExtendChunk, StepPlan
from radixmesh.shared.trace_context import TraceContext


@dataclass(slots=True)
class _Tracked:
    """A sampled request between its arrival and its finish."""

    trace: TraceContext
    queued_ns: int | None  # set while it waits to be (re)admitted
    position: int           # requests waiting ahead of it when it was queued
    retracted: bool = False
    num_chunks: int = 0
    first_token_ns: int | None = None


@dataclass(slots=True)
class _Chunk:
    tracked: _Tracked
    chunk: ExtendChunk
    index: int
    cached: CachedTiers | None  # set on the first chunk of an admission


@dataclass(slots=True)
class _SentStep:
    step_id: int
    start_ns: int
    chunks: list[_Chunk] = field(default_factory=list)


class RequestSpans:
    """Invariants: `_live` holds exactly the sampled requests the scheduler accepted and has
    not finished; `_sent` holds, oldest first, the steps in flight that carry a sampled
    chunk (results come back in plan order, so only its head can match a result)."""

    def __init__(self, recorder: SpanRecorder = DISABLED,
                 running: Mapping[str, SchedReq] | None = None) -> None:
        self._recorder = recorder
        self._running: Mapping[str, SchedReq] = running if running is not None else {}
        self._live: dict[str, _Tracked] = {}
        self._sent: deque[_SentStep] = deque()

    # ---- hooks the loop calls ----------------------------------------------------------------

    def arrived(self, request: TokenizedRequest, num_waiting: int) -> None:
        """The scheduler accepted `request`; `num_waiting` now wait, itself included."""
        if self._recorder.wants(request.trace):
            self._live[request.rid] = _Tracked(request.trace, now_ns(), num_waiting - 1)

    def rejected(self, request: TokenizedRequest, message: str) -> None:
        """The scheduler refused `request`: an instant `queue` span with the error."""
        if self._recorder.wants(request.trace):
            now = now_ns()
            self._recorder.record("queue", request.trace, now, now, error=message)

    def planned(self, plan: StepPlan) -> None:
        """`plan` is about to be sent: ends the queue wait of the requests it admits and
        starts the spans of its sampled chunks."""
        live = self._live
        if not live:
            return
        now = 0
        for rid in plan.released:  # a live rid released is a retraction: it waits again
            tracked = live.get(rid)
            if tracked is not None:
                now = now or now_ns()
                tracked.queued_ns, tracked.retracted, tracked.position = now, True, 0
        admitted = {new.rid for new in plan.new_requests if new.rid in live}
        sent: _SentStep | None = None
        for chunk in plan.extends:
            tracked = live.get(chunk.rid)
            if tracked is None:
                continue
            now = now or now_ns()
            sent = sent or _SentStep(plan.step_id, now)
            cached = None
            if chunk.rid in admitted:
                self._end_queue(tracked, now)
                req = self._running.get(chunk.rid)
                cached = req.cached_tiers if req is not None else CachedTiers(chunk.start)
            sent.chunks.append(_Chunk(tracked, chunk, tracked.num_chunks, cached))
            tracked.num_chunks += 1
        if sent is not None:
            self._sent.append(sent)

    def completed(self, step_id: int) -> None:
        """The result of `step_id` is back: its sampled chunks' spans end now."""
        if not self._sent or self._sent[0].step_id != step_id:
            return
        sent = self._sent.popleft()
        end = now_ns()
        for item in sent.chunks:
            self._record_chunk(item, sent.start_ns, end)
            if item.chunk.sample and item.tracked.first_token_ns is None:
                item.tracked.first_token_ns = end

    def finished(self, delta: TokenDelta) -> None:
        """`delta` finishes its request: records `decode` (or the `queue` it never left)."""
        tracked = self._live.pop(delta.rid, None) if self._live else None
        if tracked is None or delta.finish is None:
            return
        end = now_ns()
        finish = delta.finish
        error = (finish.message or "aborted") if finish.kind is FinishKind.ABORT else None
        if tracked.queued_ns is not None and tracked.num_chunks == 0:
            self._end_queue(tracked, end, error)
            return
        if tracked.queued_ns is not None:  # retracted, and finished before re-admission
            self._end_queue(tracked, end, error)
        output_tokens = delta.usage.completion_tokens if delta.usage is not None else 0
        start = tracked.first_token_ns if tracked.first_token_ns is not None else end
        self._recorder.record("decode", tracked.trace, start, end, {
            "gen_ai.usage.output_tokens": output_tokens,
            "gen_ai.response.finish_reasons": (finish.kind.value,)}, error=error)

    # ---- spans -------------------------------------------------------------------------------

    def _end_queue(self, tracked: _Tracked, end: int, error: str | None = None) -> None:
        start, tracked.queued_ns = tracked.queued_ns, None
        if start is None:
            return
        self._recorder.record("queue", tracked.trace, start, end, {
            "radixmesh.queue.position": tracked.position,
            "radixmesh.queue.retracted": tracked.retracted}, error=error)

    def _record_chunk(self, item: _Chunk, start: int, end: int) -> None:
        chunk, trace = item.chunk, item.tracked.trace
        attributes: dict[str, object] = {
            "radixmesh.prefill.chunk_index": item.index,
            "radixmesh.prefill.computed_tokens": chunk.length,
            "radixmesh.prefill.last_chunk": chunk.sample}
        tiers = item.cached
        if tiers is not None:
            attributes["radixmesh.prefill.cached_tokens"] = chunk.start
            attributes["radixmesh.cached_tokens.device"] = tiers.device
            attributes["radixmesh.cached_tokens.host"] = tiers.host
            attributes["radixmesh.cached_tokens.storage"] = tiers.storage
        self._recorder.record("prefill", trace, start, end, attributes)
        loaded = tiers.host + tiers.storage if tiers is not None else 0
        if loaded:
            # The loads ride on this chunk's step and land before its forward pass reads
            # them; the step is the finest time the scheduler has of them.
            self._recorder.record("hicache.load", trace, start, end, {
                "radixmesh.hicache.loaded_tokens": loaded,
                "radixmesh.cached_tokens.host": tiers.host,
                "radixmesh.cached_tokens.storage": tiers.storage})
