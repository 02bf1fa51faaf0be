"""The worker's `worker.step` spans: one per step serving a sampled request, in a trace of its
own, linked to the sampled requests only; made by the real Worker gRPC service in process."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
from opentelemetry.sdk.trace import ReadableSpan

from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.services.worker.servicer import WorkerServicer
from radixmesh.services.worker.step_spans import MAX_STEP_LINKS, StepSpans
from radixmesh.shared import wire
from radixmesh.shared.protos_gen import internal_pb2_grpc
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.span_recorder import DISABLED
from radixmesh.shared.step import ExtendChunk, NewRequest, PageTableWrite, StepPlan
from radixmesh.shared.trace_context import TraceContext
from tests.tracing.conftest import MemorySpans
from tests.tracing.scheduler_driver import INFO

SAMPLING = SamplingParams(max_new_tokens=10)


def plans(traced: TraceContext, untraced: TraceContext) -> list[StepPlan]:
    """`a` (traced) prefills in two chunks while `b` (untraced) prefills and decodes beside
    it; then both decode; then `a` is released and `b` decodes alone."""
    a = NewRequest("a", tuple(range(10, 16)), 6, 0, (), SAMPLING, traced)
    b = NewRequest("b", (21, 22, 23), 3, 0, (), SAMPLING, untraced)
    return [
        StepPlan(1, new_requests=[a, b], page_writes=[PageTableWrite("a", 0, (1, 2, 3, 4)),
                                                      PageTableWrite("b", 0, (7, 8, 9, 10))],
                 extends=[ExtendChunk("a", 0, 4, False), ExtendChunk("b", 0, 3, True)]),
        StepPlan(2, page_writes=[PageTableWrite("a", 4, (5, 6, 11))],
                 extends=[ExtendChunk("a", 4, 2, True)], decodes=["b"]),
        StepPlan(3, page_writes=[PageTableWrite("a", 7, (12,)), PageTableWrite("b", 5, (13,))],
                 decodes=["a", "b"]),
        StepPlan(4, released=["a"], page_writes=[PageTableWrite("b", 6, (14,))],
                 decodes=["b"]),
        StepPlan(5, released=["b"]),
    ]


def links_of(span: ReadableSpan) -> list[tuple[str, str]]:
    return [(f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}")
            for link in span.links]


def test_step_spans_link_only_sampled_requests_and_describe_the_batch(
        memory_spans: MemorySpans, sampled_trace: TraceContext, unsampled_trace: TraceContext):
    spans, worker = StepSpans(memory_spans.recorder), NullWorker(INFO)
    for plan in plans(sampled_trace, unsampled_trace):
        step = spans.launching(plan)
        result = worker.execute(plan)
        if step is not None:
            spans.finished(step, result.cuda_graph)
    steps = sorted(memory_spans.named("worker.step"),
                   key=lambda span: span.attributes["radixmesh.step.id"])
    assert [span.attributes["radixmesh.step.id"] for span in steps] == [1, 2, 3]
    described = [(span.attributes["radixmesh.step.batch_size"],
                  span.attributes["radixmesh.step.forward_mode"],
                  span.attributes["radixmesh.step.num_tokens"],
                  span.attributes["radixmesh.step.cuda_graph"]) for span in steps]
    assert described == [(2, "extend", 7, False), (2, "mixed", 3, False),
                         (2, "decode", 2, False)]
    expected_link = (sampled_trace.trace_id, sampled_trace.traceparent[36:52])
    for span in steps:
        assert span.parent is None  # a trace of its own: it serves several requests
        assert f"{span.context.trace_id:032x}" != sampled_trace.trace_id
        assert links_of(span) == [expected_link]
        assert span.start_time <= span.end_time
    assert memory_spans.finished() == steps


def test_a_large_batch_links_its_prefills_first_and_counts_every_sampled_request(
        memory_spans: MemorySpans):
    def traced(index: int) -> TraceContext:
        return TraceContext.of_span(index + 1, index + 1, 1, "")

    decoding = [NewRequest(f"d{i}", (1,), 1, 0, (), SAMPLING, traced(i))
                for i in range(2 * MAX_STEP_LINKS)]
    prefilling = NewRequest("p", (1, 2), 2, 0, (), SAMPLING, traced(999))
    spans = StepSpans(memory_spans.recorder)
    step = spans.launching(StepPlan(1, new_requests=[*decoding, prefilling],
                                    extends=[ExtendChunk("p", 0, 2, True)],
                                    decodes=[new.rid for new in decoding]))
    assert step is not None
    spans.finished(step, cuda_graph=True)
    [span] = memory_spans.named("worker.step")
    linked_trace_ids = [link.context.trace_id for link in span.links]
    assert len(linked_trace_ids) == MAX_STEP_LINKS
    assert linked_trace_ids[0] == 1000  # the prefill's request, ahead of the decodes
    assert linked_trace_ids[1:] == list(range(1, MAX_STEP_LINKS))
    assert span.attributes["radixmesh.step.sampled_requests"] == 2 * MAX_STEP_LINKS + 1
    assert span.attributes["radixmesh.step.batch_size"] == 2 * MAX_STEP_LINKS + 1


def test_nothing_is_made_while_tracing_is_off(sampled_trace: TraceContext,
                                              unsampled_trace: TraceContext):
    spans = StepSpans(DISABLED)
    assert all(spans.launching(plan) is None for plan in plans(sampled_trace, unsampled_trace))
    assert not spans._sampled


def test_the_worker_service_records_steps_of_its_execute_stream(
        memory_spans: MemorySpans, sampled_trace: TraceContext, unsampled_trace: TraceContext):
    async def scenario() -> None:
        executor = ThreadPoolExecutor(max_workers=1)
        servicer = WorkerServicer(NullWorker(INFO), executor, recorder=memory_spans.recorder)
        server = grpc.aio.server()
        internal_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = internal_pb2_grpc.WorkerStub(channel).Execute()
                steps = plans(sampled_trace, unsampled_trace)
                for plan in steps:  # all sent ahead: the worker overlaps launches and finishes
                    await call.write(wire.plan_to_proto(plan))
                results = [await call.read() for _ in steps]
                await call.done_writing()
            assert [result.step_id for result in results] == [1, 2, 3, 4, 5]
        finally:
            await server.stop(None)
            executor.shutdown()

    asyncio.run(scenario())
    steps = memory_spans.named("worker.step")
    assert sorted(span.attributes["radixmesh.step.id"] for span in steps) == [1, 2, 3]
    assert all(len(span.links) == 1 for span in steps)
