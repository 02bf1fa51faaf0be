"""The front door's spans, exported over real OTLP/gRPC to an in-test receiver (issue 14).

The front door is the real TokenizerServer with `--enable-trace --otlp-traces-endpoint
<receiver>`; behind it a MiniMesh (real Scheduler, Detokenizer, NullWorker) that records no
spans, so every span received is the front door's. Each test stops the front door before
reading the receiver: shutdown flushes the export queue, so nothing is waited for by time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import grpc
import openai
import pytest

from radixmesh.bench.span_receiver import ReceivedSpan, SpanReceiver
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.shared.front_door import request_span as rs
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, generate_pb2_grpc
from radixmesh.shared.span_recorder import DISABLED
from radixmesh.shared.step import StepPlan, StepResult
from tests.mesh.front_door_harness import FrontDoor, null_worker, running_front_door

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("clean_otel_env")]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
UNSAMPLED = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-00"
CHAT_ROOT, COMPLETION_ROOT = "POST /v1/chat/completions", "POST /v1/completions"
SERVER_KIND, ERROR = 2, 2  # OTLP's SPAN_KIND_SERVER and STATUS_CODE_ERROR


def traced(receiver: SpanReceiver, worker: NullWorker | None = None):
    return running_front_door(worker, enable_trace=True,
                              otlp_traces_endpoint=receiver.address)


def only(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    named = [span for span in spans if span.name == name]
    assert len(named) == 1, f"{len(named)} spans named {name!r} in {spans}"
    return named[0]


def sent_traceparents(door: FrontDoor) -> dict[str, str]:
    """The trace context each request carried into the mesh, by rid."""
    return {message.rid: message.trace.traceparent
            for batch in door.mesh.batches_received for message in batch.requests}


async def until(done: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.01)


async def read_rest(call: grpc.aio.UnaryStreamCall) -> list[generate_pb2.GenerateResponse]:
    """The replies left on a call already read from (reads and iteration cannot mix)."""
    replies = []
    while (reply := await call.read()) is not grpc.aio.EOF:
        replies.append(reply)
    return replies


def generate_request(rid: str, max_new_tokens: int = 4, **sampling: float,
                     ) -> generate_pb2.GenerateRequest:
    return generate_pb2.GenerateRequest(
        rid=rid, text="hello there", sampling=common_pb2.SamplingParams(
            max_new_tokens=max_new_tokens, **sampling))


@contextlib.asynccontextmanager
async def generation_stub(door: FrontDoor) -> AsyncIterator[generate_pb2_grpc.GenerationStub]:
    async with grpc.aio.insecure_channel(door.grpc_address) as channel:
        yield generate_pb2_grpc.GenerationStub(channel)


def assert_root(root: ReceivedSpan, operation: str, model: str) -> None:
    assert root.service == "radixmesh-tokenizer" and root.kind == SERVER_KIND
    assert root.attributes[rs.OPERATION] == operation
    assert root.attributes[rs.MODEL] == model


def test_a_streamed_chat_completion_is_a_root_with_a_tokenize_child(
        span_receiver: SpanReceiver) -> None:
    async def scenario() -> tuple[dict, str, str]:
        async with traced(span_receiver) as door:
            client = openai.AsyncOpenAI(base_url=door.http_url + "/v1", api_key="x")
            raw = await client.chat.completions.with_raw_response.create(
                model=door.server.config.served_model_name, max_tokens=5, temperature=0.5,
                top_p=0.75, stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "Say hello"}])
            chunks = [chunk async for chunk in raw.parse()]
            await client.close()
            return (chunks[-1].usage.model_dump(), chunks[0].id, raw.headers["x-trace-id"])

    usage, response_id, trace_id = asyncio.run(scenario())
    spans = span_receiver.snapshot()
    root, tokenize = only(spans, CHAT_ROOT), only(spans, rs.TOKENIZE)
    assert_root(root, "chat", "tiny-llama")
    assert root.parent_span_id == "" and root.status_code != ERROR
    assert tokenize.parent_span_id == root.span_id and tokenize.trace_id == root.trace_id
    assert trace_id == root.trace_id
    attributes = root.attributes
    assert response_id == "chatcmpl-" + attributes[rs.REQUEST_ID]
    assert (attributes[rs.MAX_TOKENS], attributes[rs.TEMPERATURE], attributes[rs.TOP_P]) \
        == (5, 0.5, 0.75)
    assert attributes[rs.FINISH_REASONS] == ("length",)
    assert attributes[rs.INPUT_TOKENS] == usage["prompt_tokens"]
    assert attributes[rs.OUTPUT_TOKENS] == usage["completion_tokens"] == 5
    assert attributes[rs.CACHED_TOKENS] == usage["prompt_tokens_details"]["cached_tokens"]
    assert 0 < attributes[rs.TIME_TO_FIRST_TOKEN] <= root.duration_s
    assert attributes[rs.HTTP_STATUS] == 200
    assert {span.trace_id for span in spans} == {root.trace_id}


def test_an_incoming_traceparent_is_the_parent_and_the_mesh_gets_the_root(
        span_receiver: SpanReceiver) -> None:
    async def scenario() -> tuple[str, dict[str, str]]:
        async with traced(span_receiver) as door, aiohttp.ClientSession(door.http_url) as http:
            async with http.post("/v1/completions", headers={"traceparent": SAMPLED},
                                 json={"prompt": "hi", "max_tokens": 3, "rid": "c1"}) as reply:
                assert reply.status == 200
                await reply.json()
                header = reply.headers[rs.TRACE_ID_HEADER]
            return header, sent_traceparents(door)

    header, sent = asyncio.run(scenario())
    root = only(span_receiver.snapshot(), COMPLETION_ROOT)
    assert_root(root, "text_completion", "tiny-llama")
    assert (root.trace_id, root.parent_span_id, header) == (TRACE_ID, PARENT_SPAN_ID, TRACE_ID)
    assert root.attributes[rs.REQUEST_ID] == "c1"
    # The scheduler, worker and detokenizer make their spans children of the root.
    assert sent["c1"] == f"00-{TRACE_ID}-{root.span_id}-01"


def test_grpc_generate_is_a_root_named_by_its_rpc_with_the_trace_id_trailer(
        span_receiver: SpanReceiver) -> None:
    async def scenario() -> dict[str, str]:
        trailers = {}
        async with traced(span_receiver) as door, generation_stub(door) as stub:
            for rid, metadata in (("g-parent", (("traceparent", SAMPLED),)),
                                  ("g-malformed", (("traceparent", "00-zz-01"),))):
                call = stub.Generate(generate_request(rid, temperature=0.0), metadata=metadata)
                replies = [reply async for reply in call]
                assert replies[-1].finish.type == "length"
                trailers[rid] = dict(await call.trailing_metadata())[rs.TRACE_ID_TRAILER]
        return trailers

    trailers = asyncio.run(scenario())
    spans = span_receiver.snapshot()
    roots = {span.attributes[rs.REQUEST_ID]: span for span in spans if span.name == rs.GENERATE}
    assert set(roots) == {"g-parent", "g-malformed"}
    for rid, root in roots.items():
        assert_root(root, "text_completion", "tiny-llama")
        assert trailers[rid] == root.trace_id
        assert root.attributes[rs.FINISH_REASONS] == ("length",)
        assert root.attributes[rs.OUTPUT_TOKENS] == 4
        assert rs.HTTP_STATUS not in root.attributes
        [tokenize] = [s for s in spans if s.name == rs.TOKENIZE and s.trace_id == root.trace_id]
        assert tokenize.parent_span_id == root.span_id
    assert (roots["g-parent"].trace_id, roots["g-parent"].parent_span_id) \
        == (TRACE_ID, PARENT_SPAN_ID)
    # A malformed traceparent is ignored: a new root of a new trace.
    assert roots["g-malformed"].parent_span_id == "" and roots["g-malformed"].trace_id != TRACE_ID


def test_an_unsampled_request_makes_no_span_and_returns_no_trace_id(
        span_receiver: SpanReceiver) -> None:
    async def scenario() -> dict[str, str]:
        async with traced(span_receiver) as door, generation_stub(door) as stub, \
                aiohttp.ClientSession(door.http_url) as http:
            async with http.post("/v1/completions", headers={"traceparent": UNSAMPLED},
                                 json={"prompt": "hi", "max_tokens": 3, "rid": "h"}) as reply:
                assert reply.status == 200 and rs.TRACE_ID_HEADER not in reply.headers
            call = stub.Generate(generate_request("g"), metadata=(("traceparent", UNSAMPLED),))
            assert [reply async for reply in call][-1].finish.type == "length"
            assert rs.TRACE_ID_TRAILER not in dict(await call.trailing_metadata())
            return sent_traceparents(door)

    sent = asyncio.run(scenario())
    assert span_receiver.snapshot() == []
    assert sent == {"h": "", "g": ""}  # nothing downstream records either


def test_a_bad_request_is_an_error_span_and_still_returns_the_trace_id(
        span_receiver: SpanReceiver) -> None:
    async def scenario() -> tuple[str, str]:
        async with traced(span_receiver) as door, generation_stub(door) as stub, \
                aiohttp.ClientSession(door.http_url) as http:
            async with http.post("/v1/completions",
                                 json={"prompt": "hi", "temperature": -1}) as reply:
                assert reply.status == 400
                header = reply.headers[rs.TRACE_ID_HEADER]
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Generate(generate_request("bad", top_p=5.0)).read()
            assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            return header, dict(raised.value.trailing_metadata())[rs.TRACE_ID_TRAILER]

    header, trailer = asyncio.run(scenario())
    spans = span_receiver.snapshot()
    http_root, grpc_root = only(spans, COMPLETION_ROOT), only(spans, rs.GENERATE)
    assert (header, trailer) == (http_root.trace_id, grpc_root.trace_id)
    assert http_root.attributes[rs.HTTP_STATUS] == 400
    for root in (http_root, grpc_root):
        assert root.status_code == ERROR and "exception" in root.events
        [tokenize] = [s for s in spans if s.name == rs.TOKENIZE and s.trace_id == root.trace_id]
        assert tokenize.status_code == ERROR and tokenize.parent_span_id == root.span_id
        assert rs.FINISH_REASONS not in root.attributes


class SlowWorker(NullWorker):
    """A NullWorker taking STEP_S a step: a request of LONG tokens is still running while the
    test aborts it or leaves (nothing is asserted on time)."""

    STEP_S = 0.02

    def __init__(self) -> None:
        super().__init__(null_worker().info())

    def execute(self, plan: StepPlan) -> StepResult:
        time.sleep(self.STEP_S)
        return super().execute(plan)


LONG = 1500  # tokens: 30 s of SlowWorker steps


def test_aborted_and_abandoned_requests_are_error_spans(span_receiver: SpanReceiver) -> None:
    async def scenario() -> None:
        async with traced(span_receiver, SlowWorker()) as door, generation_stub(door) as stub, \
                aiohttp.ClientSession(door.http_url) as http:
            live = lambda: door.server.router.num_live  # noqa: E731
            # gRPC: the client's Abort ends its stream with an "abort" finish.
            call = stub.Generate(generate_request("aborted", max_new_tokens=LONG))
            await call.read()
            assert (await stub.Abort(generate_pb2.AbortRequest(rid="aborted"))).found
            assert (await read_rest(call))[-1].finish.type == "abort"
            # gRPC: the client cancels its call.
            call = stub.Generate(generate_request("cancelled", max_new_tokens=LONG))
            await call.read()
            call.cancel()
            await until(lambda: live() == 0)
            # HTTP: the client drops the connection mid-stream (after the opening chunk).
            reply = await http.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": LONG,
                "stream": True, "rid": "gone"})
            assert rs.TRACE_ID_HEADER in reply.headers
            await reply.content.readline()
            assert live() == 1
            reply.close()
            await until(lambda: live() == 0)

    asyncio.run(scenario())
    roots = {span.attributes[rs.REQUEST_ID]: span for span in span_receiver.snapshot()
             if span.name in (rs.GENERATE, CHAT_ROOT)}
    assert set(roots) == {"aborted", "cancelled", "gone"}
    assert all(root.status_code == ERROR for root in roots.values())
    assert roots["aborted"].attributes[rs.FINISH_REASONS] == ("abort",)
    assert roots["aborted"].attributes[rs.OUTPUT_TOKENS] >= 1
    assert rs.TIME_TO_FIRST_TOKEN in roots["aborted"].attributes
    assert rs.FINISH_REASONS not in roots["gone"].attributes


def test_tracing_off_exports_nothing_and_creates_no_exporter(
        span_receiver: SpanReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc import trace_exporter

    def no_exporter(*args: object, **kwargs: object) -> None:
        raise AssertionError("an OTLP exporter was created with tracing off")

    monkeypatch.setattr(trace_exporter, "OTLPSpanExporter", no_exporter)

    async def scenario() -> dict[str, str]:
        async with running_front_door(otlp_traces_endpoint=span_receiver.address) as door, \
                aiohttp.ClientSession(door.http_url) as http:
            assert door.server.recorder is DISABLED
            async with http.post("/v1/completions", headers={"traceparent": SAMPLED},
                                 json={"prompt": "hi", "max_tokens": 2, "rid": "off"}) as reply:
                assert reply.status == 200 and rs.TRACE_ID_HEADER not in reply.headers
            return sent_traceparents(door)

    sent = asyncio.run(scenario())
    assert sent == {"off": SAMPLED}  # passed on as received, exactly as before tracing
    assert span_receiver.snapshot() == []


@pytest.mark.parametrize(("ratio", "traced_requests"), [("0", 0), ("1", 3)])
def test_the_traceidratio_sampler_decides_at_the_front_door(
        span_receiver: SpanReceiver, monkeypatch: pytest.MonkeyPatch, ratio: str,
        traced_requests: int) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)

    async def scenario() -> list[bool]:
        async with traced(span_receiver) as door, aiohttp.ClientSession(door.http_url) as http:
            headers = []
            for rid in ("r0", "r1", "r2"):
                async with http.post("/v1/completions",
                                     json={"prompt": "hi", "max_tokens": 2, "rid": rid}) as reply:
                    assert reply.status == 200
                    headers.append(rs.TRACE_ID_HEADER in reply.headers)
            return headers

    headers = asyncio.run(scenario())
    roots = [span for span in span_receiver.snapshot() if span.name == COMPLETION_ROOT]
    assert len(roots) == headers.count(True) == traced_requests
    assert len(span_receiver.snapshot()) == 2 * traced_requests  # each root and its tokenize
