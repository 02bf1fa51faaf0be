"""One trace per request across the real mesh (`radixmesh up --enable-trace`, the tiny model
on CPU), exported over OTLP/gRPC to a real receiver: the span tree of design §6."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from radixmesh.bench.span_receiver import ReceivedSpan, SpanReceiver
from radixmesh.client import AsyncClient
from tests.mesh.conftest import MeshProcess, start_mesh

pytestmark = pytest.mark.slow

CHUNK = 16  # a small --chunked-prefill-size, so a modest prompt is prefilled in chunks
LONG_PROMPT = " ".join(["the quick brown fox jumps over the lazy dog"] * 8)
CLIENT_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STAGES = {"tokenize", "queue", "prefill", "decode", "detokenize"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[SpanReceiver]:
    receiver = SpanReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def traced_mesh(mesh_model_path: Path, receiver: SpanReceiver) -> Iterator[MeshProcess]:
    with start_mesh(mesh_model_path, "--enable-trace", "--otlp-traces-endpoint",
                    receiver.address, "--chunked-prefill-size", str(CHUNK),
                    worker="model") as mesh:
        yield mesh


def whole_trace(receiver: SpanReceiver, trace_id: str, root_name: str) -> list[ReceivedSpan]:
    """The trace's spans once the root and every stage have arrived (each service exports on
    its own schedule)."""
    def complete(spans: list[ReceivedSpan]) -> bool:
        return STAGES | {root_name} <= {span.name for span in spans if span.trace_id == trace_id}
    receiver.wait_for(complete, timeout=20.0)
    return receiver.of_trace(trace_id)


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, (name, [span.name for span in spans])
    return found[0]


def steps_linked_to(receiver: SpanReceiver, root: ReceivedSpan) -> list[ReceivedSpan]:
    def linked(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [span for span in spans
                if span.name == "worker.step" and (root.trace_id, root.span_id) in span.links]
    return linked(receiver.wait_for(lambda spans: bool(linked(spans))))


def assert_tree(spans: list[ReceivedSpan], root_name: str) -> ReceivedSpan:
    root = one(spans, root_name)
    children = [span for span in spans if span is not root]
    assert {span.parent_span_id for span in children} == {root.span_id}
    assert {span.service for span in spans} == {
        "radixmesh-tokenizer", "radixmesh-scheduler", "radixmesh-detokenizer"}
    services = {span.name: span.service for span in spans}
    assert services["tokenize"] == "radixmesh-tokenizer"
    assert services["queue"] == services["prefill"] == services["decode"] == "radixmesh-scheduler"
    assert services["detokenize"] == "radixmesh-detokenizer"
    queue, decode = one(spans, "queue"), one(spans, "decode")
    prefills = sorted((span for span in spans if span.name == "prefill"),
                      key=lambda span: span.start_ns)
    assert queue.end_ns <= prefills[0].start_ns + 1_000_000  # 1 ms: separate clocks per call
    assert prefills[-1].start_ns <= decode.start_ns
    assert root.start_ns <= queue.start_ns and decode.end_ns <= root.end_ns
    return root


def test_streamed_chat_completion_is_one_trace(traced_mesh: MeshProcess,
                                               receiver: SpanReceiver) -> None:
    client = openai.OpenAI(base_url=f"{traced_mesh.http_url}/v1", api_key="none")
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-llama", stream=True, max_tokens=6, temperature=0.0,
        messages=[{"role": "user", "content": LONG_PROMPT}])
    trace_id = raw.headers["x-trace-id"]
    chunks = list(raw.parse())
    assert chunks and len(trace_id) == 32

    spans = whole_trace(receiver, trace_id, "POST /v1/chat/completions")
    root = assert_tree(spans, "POST /v1/chat/completions")
    attributes = root.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "tiny-llama"
    assert attributes["gen_ai.request.max_tokens"] == 6
    assert attributes["gen_ai.request.temperature"] == 0.0
    assert attributes["gen_ai.usage.output_tokens"] == 6
    assert attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert attributes["radixmesh.time_to_first_token_s"] > 0
    prompt_tokens = attributes["gen_ai.usage.input_tokens"]
    prefills = [span for span in spans if span.name == "prefill"]
    assert len(prefills) == -(-prompt_tokens // CHUNK) >= 2
    assert sum(span.attributes["radixmesh.prefill.computed_tokens"] for span in prefills) \
        + attributes["radixmesh.cached_tokens"] == prompt_tokens
    assert one(spans, "decode").attributes["gen_ai.usage.output_tokens"] == 6
    # The worker's steps are traces of their own, linked to the request they served.
    assert steps_linked_to(receiver, root), "no worker.step linked to the request"
    assert {span.service for span in steps_linked_to(receiver, root)} == {"radixmesh-worker"}


def test_grpc_generate_continues_the_clients_trace(traced_mesh: MeshProcess,
                                                   receiver: SpanReceiver) -> None:
    async def generate() -> None:
        client = AsyncClient(traced_mesh.grpc_address)
        await client.complete(text=LONG_PROMPT, max_new_tokens=4, traceparent=CLIENT_PARENT)
    asyncio.run(generate())

    trace_id = CLIENT_PARENT.split("-")[1]
    spans = whole_trace(receiver, trace_id, "Generate")
    root = assert_tree(spans, "Generate")
    assert root.parent_span_id == CLIENT_PARENT.split("-")[2]
    assert root.attributes["gen_ai.operation.name"] == "text_completion"
    assert root.attributes["gen_ai.usage.output_tokens"] == 4
    assert root.status_code != 2


def test_a_failed_request_has_an_error_status(traced_mesh: MeshProcess,
                                              receiver: SpanReceiver) -> None:
    client = openai.OpenAI(base_url=f"{traced_mesh.http_url}/v1", api_key="none",
                           max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="tiny-llama", prompt="hello", max_tokens=10**9)
    trace_id = raised.value.response.headers["x-trace-id"]
    spans = receiver.wait_for(
        lambda got: any(span.trace_id == trace_id and span.name == "POST /v1/completions"
                        for span in got))
    root = one([span for span in spans if span.trace_id == trace_id], "POST /v1/completions")
    assert root.status_code == 2  # ERROR
    assert root.attributes["http.response.status_code"] == 400


def test_no_receiver_costs_no_request(mesh_model_path: Path) -> None:
    """Tracing pointed at a port where nothing listens: every request still succeeds (the
    spans are dropped on the exporters' threads, never waited for by a request)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{unused.getsockname()[1]}"
    with start_mesh(mesh_model_path, "--enable-trace", "--otlp-traces-endpoint", nowhere) as mesh:
        client = openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="none", max_retries=0)
        for _ in range(5):
            reply = client.completions.create(model="tiny-llama", prompt="hello", max_tokens=4)
            assert reply.usage.completion_tokens == 4
        assert mesh.process.poll() is None
