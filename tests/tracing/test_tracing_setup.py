"""shared/tracing.py against a real OTLP receiver: on, off, sampling, endpoints, a receiver
that is not there, a full export queue."""

from __future__ import annotations

import subprocess
import sys

import pytest

from radixmesh.bench.span_receiver import SpanReceiver
from radixmesh.shared import span_queue
from radixmesh.shared.span_recorder import DISABLED, context_of, now_ns
from radixmesh.shared.trace_context import NO_TRACE, TraceContext
from radixmesh.shared.tracing import (
    DEFAULT_OTLP_ENDPOINT,
    TracingFlags,
    otlp_endpoint,
    start_tracing,
    stop_tracing,
)
from tests.tracing.conftest import SAMPLED, UNSAMPLED

pytestmark = pytest.mark.usefixtures("clean_otel_env")


def test_off_creates_nothing_and_does_not_import_the_sdk() -> None:
    code = ("import sys\n"
            "from radixmesh.shared.tracing import TracingFlags, start_tracing\n"
            "from radixmesh.shared.span_recorder import DISABLED\n"
            "recorder = start_tracing('scheduler', TracingFlags())\n"
            "assert recorder is DISABLED and not recorder.enabled\n"
            "recorder.record('x', None, 0, 1)\n"
            "assert recorder.start('y') is None\n"
            "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-P", "-c", code], check=True)


def test_services_export_one_trace_over_otlp(span_receiver: SpanReceiver) -> None:
    flags = TracingFlags(enable_trace=True, otlp_traces_endpoint=span_receiver.address)
    front_door, scheduler = start_tracing("tokenizer", flags), start_tracing("scheduler", flags)
    root = front_door.start("Generate", SAMPLED, {"gen_ai.operation.name": "text_completion"})
    request = context_of(root)
    start = now_ns()
    scheduler.record("queue", request, start, start + 1_000, {"radixmesh.queue.waiting": 3})
    scheduler.record("decode", request, start, start + 2_000, error="aborted")
    scheduler.record_linked("worker.step", [scheduler.link_to(request),
                                           scheduler.link_to(UNSAMPLED)], start, start + 10)
    root.end()
    stop_tracing(front_door)
    stop_tracing(scheduler)

    spans = span_receiver.wait_for(lambda got: len(got) >= 4)
    by_name = {span.name: span for span in spans}
    assert set(by_name) == {"Generate", "queue", "decode", "worker.step"}
    root_span = by_name["Generate"]
    assert root_span.service == "radixmesh-tokenizer"
    assert (root_span.trace_id, root_span.parent_span_id) == (SAMPLED.trace_id, SAMPLED.traceparent[36:52])
    for name in ("queue", "decode"):
        assert by_name[name].service == "radixmesh-scheduler"
        assert by_name[name].parent_span_id == root_span.span_id
        assert by_name[name].trace_id == SAMPLED.trace_id
    assert by_name["queue"].attributes == {"radixmesh.queue.waiting": 3}
    assert by_name["decode"].status_code == 2  # ERROR
    step = by_name["worker.step"]
    assert step.trace_id != SAMPLED.trace_id and step.links == ((SAMPLED.trace_id, root_span.span_id),)


def test_unsampled_parent_records_nowhere(span_receiver: SpanReceiver) -> None:
    flags = TracingFlags(enable_trace=True, otlp_traces_endpoint=span_receiver.address)
    front_door, worker = start_tracing("tokenizer", flags), start_tracing("worker", flags)
    root = front_door.start("Generate", UNSAMPLED)
    assert context_of(root) is NO_TRACE
    root.end()
    worker.record("prefill", UNSAMPLED, 0, 1)
    worker.record_linked("worker.step", [worker.link_to(UNSAMPLED)], 0, 1)
    stop_tracing(front_door)
    stop_tracing(worker)
    assert span_receiver.snapshot() == []


@pytest.mark.parametrize(("ratio", "expected"), [("0", 0), ("1", 5)])
def test_ratio_sampler_decides_at_the_front_door(span_receiver: SpanReceiver,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 ratio: str, expected: int) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    flags = TracingFlags(enable_trace=True, otlp_traces_endpoint=span_receiver.address)
    front_door, scheduler = start_tracing("tokenizer", flags), start_tracing("scheduler", flags)
    for _ in range(5):
        root = front_door.start("Generate")  # a new root: the sampler alone decides
        assert context_of(root).sampled == bool(expected)
        root.end()
    # Downstream the ratio is never applied again: a sampled request is recorded.
    scheduler.record("queue", SAMPLED, 0, 1)
    stop_tracing(front_door)
    stop_tracing(scheduler)
    spans = span_receiver.wait_for(lambda got: len(got) >= expected + 1)
    assert sum(span.name == "Generate" for span in spans) == expected
    assert [span.name for span in spans if span.service == "radixmesh-scheduler"] == ["queue"]


def test_otel_service_name_overrides_the_default(span_receiver: SpanReceiver,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-worker")
    recorder = start_tracing("worker", TracingFlags(True, span_receiver.address))
    recorder.record("prefill", SAMPLED, 0, 1)
    stop_tracing(recorder)
    assert [span.service for span in span_receiver.wait_for(bool)] == ["edge-worker"]


def test_endpoint_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert otlp_endpoint(TracingFlags(True)) == DEFAULT_OTLP_ENDPOINT == "localhost:4317"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")
    assert otlp_endpoint(TracingFlags(True)) == "collector:4317"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "traces:4317")
    assert otlp_endpoint(TracingFlags(True)) == "traces:4317"
    assert otlp_endpoint(TracingFlags(True, "flag:4317")) == "flag:4317"


def test_only_the_grpc_protocol_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    with pytest.raises(ValueError, match="OTLP over gRPC only"):
        start_tracing("worker", TracingFlags(True, "127.0.0.1:4317"))


def test_absent_receiver_neither_fails_nor_blocks_recording() -> None:
    """Recording only enqueues; the export (failing, retried) happens on the queue's thread,
    and stopping gives up within its bound instead of retrying forever."""
    recorder = start_tracing("scheduler", TracingFlags(True, "127.0.0.1:9"))  # discard port
    for index in range(100):
        recorder.record("prefill", SAMPLED, index, index + 1)
    stop_tracing(recorder)  # bounded by SHUTDOWN_FLUSH_S; a hang would hit the test timeout


def test_a_full_queue_drops_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiver is absent, so the first batch of 8 sits in a retried export while the
    queue refills: of 20 spans, at most 16 fit (a batch out, a queue full), at least 4 drop."""
    monkeypatch.setattr(span_queue, "MAX_QUEUED_SPANS", 8)
    monkeypatch.setattr(span_queue, "EXPORT_BATCH", 8)
    monkeypatch.setattr(span_queue, "EXPORT_DELAY_MS", 60_000)
    recorder = start_tracing("scheduler", TracingFlags(True, "127.0.0.1:9"))
    for index in range(20):
        recorder.record("prefill", SAMPLED, index, index + 1)
    assert 4 <= recorder.dropped_spans <= 12
    stop_tracing(recorder)
    assert DISABLED.dropped_spans == 0


def test_trace_context_of_a_span_round_trips() -> None:
    context = TraceContext.of_span(0xAB, 0xCD, 1, "k=v")
    assert context.traceparent == f"00-{0xAB:032x}-{0xCD:016x}-01"
    assert context.sampled and context.trace_id == f"{0xAB:032x}" and context.tracestate == "k=v"
    assert TraceContext.parse(context.traceparent) == TraceContext(context.traceparent)
    assert not TraceContext.of_span(0xAB, 0xCD, 0).sampled
