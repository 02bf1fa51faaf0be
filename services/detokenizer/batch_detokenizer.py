"""The detokenizer service's core: one scheduler TokenBatch in, one round of TextDeltas out.

Wraps `Detokenizer` with what the service needs around it: registration ahead of the first
delta, the usage of requests a stop string ends (the scheduler, which fills usage for every
other finish, learns of those only later), release of finished requests, and a pass-through
for models without a tokenizer, and the `detokenize` span of each sampled request (from its
first delta to its finish, recorded once then; each round takes at most one clock reading).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from radixmesh.services.detokenizer.detokenizer import Detokenizer
from radixmesh.services.detokenizer.incremental import TokenDecoder
from radixmesh.shared.requests import TextDelta, TokenDelta, Usage
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder, now_ns
from radixmesh.shared.token_batch import TokenBatch
from radixmesh.shared.trace_context import NO_TRACE, TraceContext

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestProgress:
    num_prompt_tokens: int
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    trace: TraceContext = NO_TRACE  # the parent of this request's detokenize span
    num_batches: int = 0  # scheduler batches that carried a delta of it
    first_ns: int = 0     # when its first delta arrived (tracing on only)


class BatchDetokenizer:
    """Invariants: a delta for an unregistered (or already finished) rid yields nothing; every
    finish releases the rid; each finishing TextDelta carries usage."""

    def __init__(self, tokenizer: TokenDecoder | None,
                 recorder: SpanRecorder = DISABLED) -> None:
        self._detokenizer = Detokenizer(tokenizer) if tokenizer is not None else None
        self._requests: dict[str, RequestProgress] = {}
        self._recorder = recorder

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, rid: str) -> bool:
        return rid in self._requests

    def register(self, rid: str, stop: Sequence[str], prompt_tail_ids: Sequence[int],
                 num_prompt_tokens: int, trace: TraceContext = NO_TRACE) -> None:
        if rid in self._requests:  # the scheduler never reuses a live rid: drop the stale one
            logger.warning("request %r registered twice: restarting its stream", rid)
            self._release(rid)
        self._requests[rid] = RequestProgress(num_prompt_tokens, trace=trace)
        if self._detokenizer is not None:
            self._detokenizer.add_request(rid, stop, prompt_tail_ids)

    def round(self, batch: TokenBatch) -> list[TextDelta]:
        """One scheduler batch: its registrations, then its deltas."""
        for reg in batch.registrations:
            self.register(reg.rid, reg.stop, reg.prompt_tail_ids, reg.num_prompt_tokens,
                          reg.trace)
        return self.process(batch.deltas, batch.num_cached_tokens)

    def process(self, deltas: Sequence[TokenDelta],
                num_cached_tokens: dict[str, int]) -> list[TextDelta]:
        """`num_cached_tokens` holds the prompt tokens served from the cache, by rid, for the
        requests whose first delta is in `deltas`."""
        out: list[TextDelta] = []
        # One reading per round, and none while tracing is off (first_ns then stays 0).
        arrived = now_ns() if self._recorder.enabled and deltas else 0
        for delta, text in zip(deltas, self._decode(deltas), strict=True):
            progress = self._requests.get(delta.rid)
            if progress is None:
                continue
            progress.num_output_tokens += len(delta.token_ids)
            progress.num_batches += 1
            if not progress.first_ns:
                progress.first_ns = arrived
            if delta.rid in num_cached_tokens:
                progress.num_cached_tokens = num_cached_tokens[delta.rid]
            if text is None:
                continue
            if text.finish is not None:
                if text.usage is None:  # a stop string ended it here
                    text.usage = Usage(progress.num_prompt_tokens, progress.num_output_tokens,
                                       progress.num_cached_tokens)
                self._record(progress, text)
                self._release(delta.rid)
            out.append(text)
        return out

    def _decode(self, deltas: Sequence[TokenDelta]) -> list[TextDelta | None]:
        """One entry per delta: its TextDelta, None where it yields none."""
        if self._detokenizer is None:
            return [TextDelta(delta.rid, "", list(delta.token_ids), delta.finish, delta.usage)
                    for delta in deltas]
        return self._detokenizer.feed_aligned(deltas)

    def _record(self, progress: RequestProgress, text: TextDelta) -> None:
        if not self._recorder.wants(progress.trace):
            return
        finish = text.finish
        self._recorder.record("detokenize", progress.trace, progress.first_ns, now_ns(), {
            "gen_ai.usage.output_tokens": progress.num_output_tokens,
            "radixmesh.detokenize.batches": progress.num_batches,
            "gen_ai.response.finish_reasons": (finish.kind.value,) if finish else ()})

    def _release(self, rid: str) -> None:
        self._requests.pop(rid, None)
        if self._detokenizer is not None:
            self._detokenizer.release(rid)
