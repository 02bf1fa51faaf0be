"""The front door's span bookkeeping (shared/front_door/request_span.py), on the real SDK
exporting into memory: the root, its `tokenize` child, the GenAI attributes and failures."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.front_door import request_span as rs
from radixmesh.shared.front_door.live_request import LiveRequest, RequestStream
from radixmesh.shared.front_door.request_span import RequestSpan, RequestSpans
from radixmesh.shared.requests import FinishKind, FinishReason, TextDelta, TokenizedRequest, Usage
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.span_recorder import DISABLED
from radixmesh.shared.trace_context import NO_TRACE, TraceContext
from tests.tracing.conftest import MemorySpans

SAMPLING = SamplingParams(max_new_tokens=7, temperature=0.5, top_p=0.9)


def build(rid: str, body: object, trace: TraceContext) -> TokenizedRequest:
    """Stands in for Router.build: what the span hands it is what travels on."""
    if body == "bad":
        raise InvalidRequestError("temperature", "must be >= 0")
    return TokenizedRequest(rid, (1, 2, 3), SAMPLING, trace)


def finished_stream(finish: FinishReason, usage: Usage | None, output_tokens: int,
                    first_token_at: float | None) -> RequestStream:
    """A RequestStream read to its end, as a handler leaves it."""
    live = LiveRequest("r1", 3, num_output_tokens=output_tokens, first_token_at=first_token_at)
    stream = RequestStream(live, lambda rid: None)
    live.queue.put_nowait(TextDelta("r1", "hi", [4] * output_tokens, finish, usage))

    async def read() -> None:
        async for _ in stream:
            pass

    asyncio.run(read())
    return stream


def open_chat(memory_spans: MemorySpans, incoming: TraceContext = NO_TRACE) -> RequestSpan:
    return RequestSpans(memory_spans.recorder, "tiny").open("POST /v1/chat/completions",
                                                            rs.CHAT, incoming)


def test_tracing_off_passes_the_incoming_context_on_and_records_nothing(
        sampled_trace: TraceContext) -> None:
    span = RequestSpans(DISABLED, "tiny").open(rs.GENERATE, rs.TEXT_COMPLETION, sampled_trace)
    assert span.trace is sampled_trace and span.trace_id == "" and not span.recording
    assert span.tokenize(build, "r1", {}).trace is sampled_trace
    span.fail(RuntimeError("x"))
    span.responded(500)
    span.end()


def test_a_root_and_its_tokenize_child_carry_the_genai_attributes(
        memory_spans: MemorySpans) -> None:
    span = open_chat(memory_spans)
    request = span.tokenize(build, "r1", {})
    # What travels on names the root as parent.
    assert request.trace == span.trace and span.trace.sampled
    span.follow(finished_stream(FinishReason(FinishKind.LENGTH), Usage(3, 7, 2), 7,
                                first_token_at=span._arrival + 0.25))
    span.responded(200)
    span.end()
    span.end()  # once only

    [root] = memory_spans.named("POST /v1/chat/completions")
    [tokenize] = memory_spans.named(rs.TOKENIZE)
    assert root.kind is SpanKind.SERVER and root.parent is None
    assert tokenize.parent.span_id == root.context.span_id
    assert tokenize.context.trace_id == root.context.trace_id
    assert span.trace_id == f"{root.context.trace_id:032x}"
    assert span.trace.traceparent.split("-")[2] == f"{root.context.span_id:016x}"
    assert dict(root.attributes) == {
        rs.OPERATION: "chat", rs.MODEL: "tiny", rs.REQUEST_ID: "r1", rs.MAX_TOKENS: 7,
        rs.TEMPERATURE: 0.5, rs.TOP_P: 0.9, rs.FINISH_REASONS: ("length",),
        rs.INPUT_TOKENS: 3, rs.OUTPUT_TOKENS: 7, rs.CACHED_TOKENS: 2,
        rs.TIME_TO_FIRST_TOKEN: pytest.approx(0.25), rs.HTTP_STATUS: 200}
    assert root.status.status_code is StatusCode.UNSET


def test_an_incoming_sampled_context_is_the_parent(memory_spans: MemorySpans,
                                                   sampled_trace: TraceContext) -> None:
    span = open_chat(memory_spans, TraceContext(sampled_trace.traceparent, "k=v"))
    span.end()
    [root] = memory_spans.finished()
    assert f"{root.context.trace_id:032x}" == sampled_trace.trace_id == span.trace_id
    assert f"{root.parent.span_id:016x}" == sampled_trace.traceparent.split("-")[2]
    assert span.trace.tracestate == "k=v"  # travels on with the root as parent


def test_an_unsampled_context_records_nothing_and_carries_no_trace_on(
        memory_spans: MemorySpans, unsampled_trace: TraceContext) -> None:
    span = open_chat(memory_spans, unsampled_trace)
    assert span.trace == NO_TRACE and span.trace_id == "" and not span.recording
    assert span.tokenize(build, "r1", {}).trace == NO_TRACE
    span.end()
    assert memory_spans.finished() == []


def test_a_failed_tokenize_fails_the_child_and_the_first_error_is_kept(
        memory_spans: MemorySpans) -> None:
    span = open_chat(memory_spans)
    with pytest.raises(InvalidRequestError) as raised:
        span.tokenize(build, "r1", "bad")
    span.fail(raised.value)
    span.responded(400)  # a consequence: does not replace the cause
    span.end()
    [root] = memory_spans.named("POST /v1/chat/completions")
    [tokenize] = memory_spans.named(rs.TOKENIZE)
    for failed in (root, tokenize):
        assert failed.status.status_code is StatusCode.ERROR
        assert "temperature" in failed.status.description
        assert [event.name for event in failed.events] == ["exception"]
    assert root.attributes[rs.HTTP_STATUS] == 400


def test_an_aborted_request_is_an_error_with_its_counts(memory_spans: MemorySpans) -> None:
    span = open_chat(memory_spans)
    span.tokenize(build, "r1", {})
    span.follow(finished_stream(FinishReason(FinishKind.ABORT, message="aborted by the client"),
                                Usage(3, 1, 0), 1, first_token_at=None))
    span.end()
    [root] = memory_spans.named("POST /v1/chat/completions")
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "aborted by the client"
    assert root.attributes[rs.FINISH_REASONS] == ("abort",)
    assert rs.TIME_TO_FIRST_TOKEN not in root.attributes


def test_a_client_gone_mid_stream_keeps_the_counts_so_far(memory_spans: MemorySpans) -> None:
    span = open_chat(memory_spans)
    span.tokenize(build, "r1", {})
    live = LiveRequest("r1", 3, num_output_tokens=2, first_token_at=span._arrival)
    span.follow(RequestStream(live, lambda rid: None))
    span.fail(asyncio.CancelledError())
    span.end()
    [root] = memory_spans.named("POST /v1/chat/completions")
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == rs.CLIENT_GONE
    assert root.attributes[rs.INPUT_TOKENS] == 3 and root.attributes[rs.OUTPUT_TOKENS] == 2
    assert rs.FINISH_REASONS not in root.attributes
