"""The `hicache.prefetch` span of a sampled request: from asking L3 what it holds of the
prompt until the pages are in host memory or the prefetch is given up.

Unlike the step-timed spans (request_spans.py) it is a live span: the hicache service's own
span of the call is its child, named by the `traceparent` the calls carry as gRPC metadata.
Prefetches are few and off the step loop, so holding a span open across awaits costs nothing
that matters.
"""

from __future__ import annotations

from typing import Any

from radixmesh.shared.span_recorder import SpanRecorder, context_of, mark_failed
from radixmesh.shared.trace_context import TRACEPARENT_KEY, TRACESTATE_KEY, TraceContext

Metadata = tuple[tuple[str, str], ...]


class PrefetchSpan:
    """Made with `start`, which gives None unless the request is sampled."""

    def __init__(self, span: Any) -> None:
        self._span = span
        context = context_of(span)
        metadata = [(TRACEPARENT_KEY, context.traceparent)]
        if context.tracestate:
            metadata.append((TRACESTATE_KEY, context.tracestate))
        self.metadata: Metadata = tuple(metadata)  # what the RPCs carry to the hicache service

    @classmethod
    def start(cls, recorder: SpanRecorder, trace: TraceContext,
              num_pages: int) -> PrefetchSpan | None:
        if not recorder.wants(trace):
            return None
        span = recorder.start("hicache.prefetch", trace,
                              {"radixmesh.hicache.asked_pages": num_pages}, server=False)
        return cls(span) if span is not None else None

    def end(self, storage_pages: int, prefetched_tokens: int,
            error: BaseException | None = None) -> None:
        """`storage_pages`: leading pages L3 said it holds; `prefetched_tokens`: what reached
        host memory and the radix tree."""
        self._span.set_attribute("radixmesh.hicache.storage_pages", storage_pages)
        self._span.set_attribute("radixmesh.hicache.prefetched_tokens", prefetched_tokens)
        if error is not None:
            mark_failed(self._span, error)
        self._span.end()


def metadata_of(span: PrefetchSpan | None) -> Metadata | None:
    return span.metadata if span is not None else None
