"""What a service calls to make the spans of design §6, given the requests' trace contexts.

Services time their work as they already do (batch by batch) and hand the times over here
afterwards: `record` makes a finished span with explicit start and end, so nothing is held
open across steps and the hot path pays a few calls per sampled request, none per token.
`DISABLED` is what every service holds while tracing is off: `wants` is False and each
method returns before touching the SDK, which is then never imported.

Times are `time.time_ns()` (OpenTelemetry's clock); `now_ns` is that, named for readers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from radixmesh.shared.trace_context import NO_TRACE, TraceContext

Attributes = Mapping[str, Any]
now_ns = time.time_ns


class SpanRecorder:
    """One per service process. `tracer` is an OpenTelemetry tracer, or None while off."""

    def __init__(self, tracer: Any = None, provider: Any = None, queue: Any = None) -> None:
        self._tracer = tracer
        self.provider = provider  # the SDK TracerProvider, for shutdown (shared/tracing.py)
        self._queue = queue

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @property
    def dropped_spans(self) -> int:
        """Spans dropped because the export queue was full (a receiver away or too slow)."""
        return self._queue.dropped if self._queue is not None else 0

    def wants(self, trace: TraceContext) -> bool:
        """Whether spans under `trace` are recorded: tracing on and the request sampled."""
        return self._tracer is not None and trace.sampled

    def record(self, name: str, parent: TraceContext, start_ns: int, end_ns: int,
               attributes: Attributes | None = None, error: BaseException | str | None = None,
               events: Iterable[tuple[str, int, Attributes]] = ()) -> None:
        """A finished span, child of `parent`, when `wants(parent)`."""
        if not self.wants(parent):
            return
        span = self._tracer.start_span(name, context=_parent_context(parent),
                                       start_time=start_ns, attributes=attributes)
        for event_name, at_ns, event_attributes in events:
            span.add_event(event_name, event_attributes, timestamp=at_ns)
        if error is not None:
            mark_failed(span, error)
        span.end(end_time=end_ns)

    def link_to(self, trace: TraceContext) -> Any:
        """A link to `trace` for `record_linked`, or None while off or when `trace` is not
        sampled. Made once per request and kept: step spans link to the requests they serve,
        step after step, and parsing each one's traceparent again on every step was most of
        what tracing cost the worker at large batch."""
        if not self.wants(trace):
            return None
        from opentelemetry.trace import Link

        return Link(_span_context(trace))

    def record_linked(self, name: str, links: Sequence[Any], start_ns: int, end_ns: int,
                      attributes: Attributes | None = None) -> None:
        """A span of its own trace, linked to each of `links` (made by `link_to`; None
        entries are skipped): the worker's step, which serves many requests at once. Nothing
        when no link is left."""
        if self._tracer is None:
            return
        links = [link for link in links if link is not None]
        if not links:
            return
        from opentelemetry.context import Context

        span = self._tracer.start_span(name, context=Context(), start_time=start_ns,
                                       attributes=attributes, links=links)
        span.end(end_time=end_ns)

    def start(self, name: str, parent: TraceContext = NO_TRACE,
              attributes: Attributes | None = None, server: bool = True) -> Any:
        """A live span (the front door's root), or None while off. Its sampler decides;
        `context_of` gives what the request carries on; the caller ends it."""
        if self._tracer is None:
            return None
        from opentelemetry.context import Context
        from opentelemetry.trace import SpanKind

        context = _parent_context(parent) if parent else Context()
        return self._tracer.start_span(name, context=context, attributes=attributes,
                                       kind=SpanKind.SERVER if server else SpanKind.INTERNAL)


def context_of(span: Any, tracestate: str = "") -> TraceContext:
    """The TraceContext naming `span` as parent: NO_TRACE for no span or an unsampled one, so
    nothing downstream records under a request the front door chose not to trace."""
    if span is None or not span.is_recording():
        return NO_TRACE
    context = span.get_span_context()
    return TraceContext.of_span(context.trace_id, context.span_id, int(context.trace_flags),
                                tracestate)


def mark_failed(span: Any, error: BaseException | str) -> None:
    """Error status, and the exception recorded when there is one."""
    from opentelemetry.trace import Status, StatusCode

    if isinstance(error, BaseException):
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    else:
        span.set_status(Status(StatusCode.ERROR, error))


def _span_context(trace: TraceContext) -> Any:
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    _, trace_id, span_id, flags = trace.traceparent.split("-")
    state = TraceState.from_header([trace.tracestate]) if trace.tracestate else None
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                       trace_flags=TraceFlags(int(flags, 16)), trace_state=state)


def _parent_context(trace: TraceContext) -> Any:
    from opentelemetry.trace import NonRecordingSpan, set_span_in_context

    return set_span_in_context(NonRecordingSpan(_span_context(trace)))


DISABLED = SpanRecorder()
