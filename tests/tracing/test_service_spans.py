"""The scheduler, worker and detokenizer as real processes with `--enable-trace`, exporting
over OTLP/gRPC to a real receiver: one trace per sampled request across the three of them.

The services are stopped before the receiver is read: their way out flushes the export
queue, so nothing is waited for by time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from radixmesh.bench.span_receiver import ReceivedSpan, SpanReceiver
from radixmesh.make_model import make_model
from radixmesh.shared.protos_gen import internal_pb2
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.trace_context import TraceContext
from tests.mesh.conftest import ServiceStarter, wait_serving
from tests.mesh.test_services import MeshClient, batch

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("clean_otel_env")]

TRACED = TraceContext(f"00-{'a1' * 16}-{'b1' * 8}-01")
ABORTED = TraceContext(f"00-{'a2' * 16}-{'b2' * 8}-01")
UNTRACED = TraceContext(f"00-{'a3' * 16}-{'b3' * 8}-00")
ERROR = 2  # OTLP's STATUS_CODE_ERROR


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("spans-model") / "tiny-llama")


@pytest.fixture
def services() -> Iterator[ServiceStarter]:
    starter = ServiceStarter()
    yield starter
    starter.stop_all()


def of(spans: list[ReceivedSpan], trace: TraceContext, name: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.trace_id == trace.trace_id and span.name == name]


def test_a_sampled_request_is_traced_through_scheduler_worker_and_detokenizer(
        services: ServiceStarter, span_receiver: SpanReceiver, model_path: Path):
    trace_flags = ("--enable-trace", "--otlp-traces-endpoint", span_receiver.address)
    model = ("--model-path", str(model_path))
    worker = services.spawn("worker", "--worker", "null", *model, *trace_flags)
    detokenizer = services.spawn("detokenizer", *model, *trace_flags)
    scheduler = services.spawn("scheduler", "--worker-address", worker.address,
                               "--detokenizer-address", detokenizer.address,
                               "--chunked-prefill-size", "8", *trace_flags)
    for started in services.started:
        wait_serving(started.address, started.process, started.name)

    async def scenario() -> None:
        async with MeshClient(scheduler.address, detokenizer.address) as mesh:
            submit = mesh.scheduler.Submit()
            prompt = tuple(range(30, 60))
            await submit.write(batch(
                TokenizedRequest("traced", prompt, SamplingParams(max_new_tokens=5), TRACED),
                TokenizedRequest("untraced", prompt[:20], SamplingParams(max_new_tokens=4),
                                 UNTRACED),
                TokenizedRequest("aborted", (7, 8, 9), SamplingParams(max_new_tokens=2000),
                                 ABORTED)))
            await mesh.wait_for(lambda: len(mesh.tokens.get("aborted", [])) >= 2)
            await submit.write(internal_pb2.RequestBatch(aborts=["aborted"]))
            await mesh.wait_for(lambda: len(mesh.finishes) == 3)
            await submit.done_writing()

    asyncio.run(scenario())
    services.stop_all()  # flushes every service's spans
    spans = span_receiver.snapshot()

    assert not [span for span in spans if span.trace_id == UNTRACED.trace_id]
    traced = [span for span in spans if span.trace_id == TRACED.trace_id]
    assert {span.service for span in traced} == {"radixmesh-scheduler",
                                                 "radixmesh-detokenizer"}
    assert all(span.parent_span_id == TRACED.traceparent[36:52] for span in traced)
    [queue], [decode] = of(spans, TRACED, "queue"), of(spans, TRACED, "decode")
    prefills = sorted(of(spans, TRACED, "prefill"), key=lambda span: span.start_ns)
    assert [span.attributes["radixmesh.prefill.computed_tokens"] for span in prefills] == \
        [8, 8, 8, 6]
    assert queue.end_ns <= prefills[0].start_ns and prefills[-1].end_ns <= decode.start_ns
    assert decode.attributes["gen_ai.usage.output_tokens"] == 5
    [detokenize] = of(spans, TRACED, "detokenize")
    assert detokenize.attributes["gen_ai.usage.output_tokens"] == 5

    [aborted] = of(spans, ABORTED, "decode")
    assert aborted.status_code == ERROR
    assert aborted.attributes["gen_ai.response.finish_reasons"] == ("abort",)

    steps = [span for span in spans if span.name == "worker.step"]
    assert steps and all(span.service == "radixmesh-worker" for span in steps)
    linked = {link for span in steps for link in span.links}
    assert linked == {(TRACED.trace_id, TRACED.traceparent[36:52]),
                      (ABORTED.trace_id, ABORTED.traceparent[36:52])}
    assert sum((TRACED.trace_id, TRACED.traceparent[36:52]) in span.links
               for span in steps) >= len(prefills) + 4  # its chunks, then its decodes
