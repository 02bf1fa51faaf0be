"""The front door's root span of one request, and its `tokenize` child (design §6).

A `RequestSpan` is opened as a generating request arrives (an HTTP route or gRPC `Generate`)
and ended once, when its response is done. Its `trace` is what the request carries into the
mesh: the root's own context while tracing is on (NO_TRACE when the sampler said no, so no
service downstream records anything), the incoming context untouched while tracing is off.

The GenAI attributes (OpenTelemetry semantic conventions) are gathered as plain values and
set once at the end, read off what the router already keeps per request (the time of the
first token, the finishing delta's usage): nothing is done per token for tracing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from radixmesh.shared.front_door.live_request import RequestStream
from radixmesh.shared.requests import FinishKind, TokenizedRequest
from radixmesh.shared.span_recorder import (
    DISABLED,
    SpanRecorder,
    context_of,
    mark_failed,
    now_ns,
)
from radixmesh.shared.trace_context import TraceContext

# gen_ai.operation.name values
CHAT = "chat"
TEXT_COMPLETION = "text_completion"
TOKENIZE = "tokenize"
GENERATE = "Generate"  # the gRPC root is named by its RPC
TRACE_ID_HEADER = "X-Trace-Id"
TRACE_ID_TRAILER = "x-trace-id"  # gRPC metadata keys are lower-case

OPERATION = "gen_ai.operation.name"
MODEL = "gen_ai.request.model"
MAX_TOKENS = "gen_ai.request.max_tokens"
TEMPERATURE = "gen_ai.request.temperature"
TOP_P = "gen_ai.request.top_p"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHED_TOKENS = "radixmesh.cached_tokens"
TIME_TO_FIRST_TOKEN = "radixmesh.time_to_first_token_s"
REQUEST_ID = "radixmesh.request_id"
HTTP_STATUS = "http.response.status_code"

CLIENT_GONE = "cancelled: the client went away"

# What the router's `build` is: (rid, body, trace) -> a validated, tokenized request.
Build = Callable[[Any, Any, TraceContext], TokenizedRequest]


class RequestSpans:
    """Opens the RequestSpans of one front door: its recorder and the model it serves."""

    def __init__(self, recorder: SpanRecorder = DISABLED, model: str = "") -> None:
        self.recorder = recorder
        self.model = model

    def open(self, name: str, operation: str, incoming: TraceContext) -> RequestSpan:
        return RequestSpan(self.recorder, name, {OPERATION: operation, MODEL: self.model},
                           incoming)


class RequestSpan:
    """One request's root span (SERVER kind). Every method is a no-op unless it records."""

    __slots__ = ("trace", "trace_id", "_recorder", "_span", "_arrival", "_attributes",
                 "_stream", "_failed")

    def __init__(self, recorder: SpanRecorder, name: str, attributes: dict[str, Any],
                 incoming: TraceContext) -> None:
        self._recorder = recorder
        self._span: Any = None
        self.trace = incoming  # tracing off: passed on exactly as received
        if recorder.enabled:
            # The front door's sampler decides here (parent-based: an incoming context's
            # sampled flag wins); an unsampled root carries NO_TRACE on.
            span = recorder.start(name, incoming, attributes)
            self.trace = context_of(span, incoming.tracestate)
            if span.is_recording():
                self._span = span
        # Read after the span has ended too (a non-streamed response's headers go out then).
        self.trace_id = self.trace.trace_id if self._span is not None else ""
        self._arrival = time.perf_counter()  # the router's token times use this clock
        self._attributes: dict[str, Any] = {}
        self._stream: RequestStream | None = None
        self._failed = False

    @property
    def recording(self) -> bool:
        return self._span is not None

    def tokenize(self, build: Build, rid: Any, body: Any) -> TokenizedRequest:
        """`build(rid, body, self.trace)`, timed as the `tokenize` child span (chat template,
        encoding and validation: everything that turns the body into token ids)."""
        if self._span is None:
            return build(rid, body, self.trace)
        start = now_ns()
        try:
            request = build(rid, body, self.trace)
        except BaseException as exc:
            self._recorder.record(TOKENIZE, self.trace, start, now_ns(), error=exc)
            raise
        self._recorder.record(TOKENIZE, self.trace, start, now_ns())
        sampling = request.sampling
        self._attributes.update({REQUEST_ID: request.rid, MAX_TOKENS: sampling.max_new_tokens,
                                 TEMPERATURE: float(sampling.temperature),
                                 TOP_P: float(sampling.top_p)})
        return request

    def follow(self, stream: RequestStream) -> None:
        """The request's stream, whose outcome (usage, finish, first token) `end` reads."""
        if self._span is not None:
            self._stream = stream

    def fail(self, error: BaseException | str) -> None:
        """Marks the request failed. The first failure is kept: what follows it (an abort,
        the RPC's own abort exception) is its consequence, not its cause."""
        if self._span is None or self._failed:
            return
        self._failed = True
        if isinstance(error, asyncio.CancelledError):
            error = CLIENT_GONE  # a handler is cancelled when its client disconnects
        mark_failed(self._span, error)

    def responded(self, status: int) -> None:
        """The HTTP status sent; an error status fails the span if nothing did before."""
        if self._span is None:
            return
        self._attributes[HTTP_STATUS] = status
        if status >= 400:
            self.fail(f"HTTP {status}")

    def end(self) -> None:
        """Sets the attributes gathered and ends the span; later calls do nothing."""
        if self._span is None:
            return
        if self._stream is not None:
            self._attributes.update(self._outcome(self._stream))
        span, self._span = self._span, None
        span.set_attributes(self._attributes)
        span.end()

    def _outcome(self, stream: RequestStream) -> dict[str, Any]:
        out: dict[str, Any] = {INPUT_TOKENS: stream.num_prompt_tokens,
                               OUTPUT_TOKENS: stream.num_output_tokens}
        if stream.first_token_at is not None:
            out[TIME_TO_FIRST_TOKEN] = max(0.0, stream.first_token_at - self._arrival)
        final = stream.final
        if final is None or final.finish is None:
            return out  # ended early (client gone, mesh lost): counts so far
        out[FINISH_REASONS] = [final.finish.kind.value]
        if final.usage is not None:
            out[INPUT_TOKENS] = final.usage.prompt_tokens
            out[OUTPUT_TOKENS] = final.usage.completion_tokens
            out[CACHED_TOKENS] = final.usage.cached_tokens
        if final.finish.kind is FinishKind.ABORT:
            self.fail(final.finish.message or "aborted")
        return out
