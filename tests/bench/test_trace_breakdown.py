"""`radixmesh bench --trace-breakdown`: the per-stage math over hand-made spans, the same over
spans the OpenTelemetry SDK really exports to the bench's receiver, and the flag's checks."""

from __future__ import annotations

import pytest

from radixmesh.bench.span_receiver import ReceivedSpan
from radixmesh.bench.trace_breakdown import (
    STAGES,
    RequestParent,
    breakdown,
    format_breakdown,
    stage_seconds,
)
from radixmesh.bench.trace_collector import TraceCollector
from radixmesh.cli import main
from tests.mesh.conftest import free_port

MS = 1_000_000  # ns


def span(trace_id: str, name: str, start_ms: float, end_ms: float,
         service: str = "radixmesh-scheduler") -> ReceivedSpan:
    return ReceivedSpan(service=service, name=name, trace_id=trace_id, span_id="1" * 16,
                        parent_span_id="2" * 16, start_ns=int(start_ms * MS),
                        end_ns=int(end_ms * MS), attributes={}, status_code=0)


A, B, OTHER = "a" * 32, "b" * 32, "c" * 32


def two_requests() -> list[ReceivedSpan]:
    return [
        span(A, "POST /v1/completions", 0, 100, "radixmesh-tokenizer"),
        span(A, "tokenize", 0, 2, "radixmesh-tokenizer"),
        span(A, "queue", 2, 5),
        span(A, "prefill", 5, 15), span(A, "prefill", 15, 30),  # two chunks: 25 ms
        span(A, "decode", 30, 90),
        span(A, "detokenize", 31, 95, "radixmesh-detokenizer"),
        span(A, "worker.step", 5, 15, "radixmesh-worker"),  # not a stage
        span(B, "tokenize", 0, 4, "radixmesh-tokenizer"),
        span(B, "queue", 4, 5),
        span(B, "prefill", 5, 10),  # B failed before decoding
        span(OTHER, "decode", 0, 1000),  # another client's request: not ours
    ]


def test_stage_seconds_sum_each_requests_spans_of_a_stage() -> None:
    seconds = stage_seconds(two_requests(), {A, B})
    assert seconds["prefill"] == {A: pytest.approx(0.025), B: pytest.approx(0.005)}
    assert seconds["decode"] == {A: pytest.approx(0.06)}
    assert set(seconds) == set(STAGES)


def test_breakdown_gives_median_p99_and_count_per_stage() -> None:
    result = breakdown(two_requests(), {A, B, "d" * 32})
    assert (result["requests"], result["traced_requests"]) == (3, 2)
    stages = result["stages"]
    assert stages["tokenize"]["requests"] == 2
    assert stages["tokenize"]["median_ms"] == pytest.approx(3.0)
    assert stages["tokenize"]["p99_ms"] == pytest.approx(3.98)
    assert stages["prefill"]["median_ms"] == pytest.approx(15.0)
    assert stages["decode"] == {"requests": 1, "median_ms": pytest.approx(60.0),
                                "p99_ms": pytest.approx(60.0)}
    assert stages["detokenize"]["requests"] == 1


def test_the_table_lists_every_stage_and_says_plainly_when_no_span_came() -> None:
    table = format_breakdown(breakdown(two_requests(), {A, B}), "127.0.0.1:4318")
    lines = table.splitlines()
    assert lines[1].split() == ["Stage", "Requests", "Median", "(ms)", "P99", "(ms)"]
    assert lines[2].split() == ["tokenize", "2", "3.00", "3.98"]
    assert lines[5].split() == ["decode", "1", "60.00", "60.00"]
    assert "Spans from 2 of 2 requests." in table
    empty = format_breakdown(breakdown([], {A}), "127.0.0.1:4318")
    assert "No spans of this run reached 127.0.0.1:4318" in empty
    assert "--enable-trace --otlp-traces-endpoint 127.0.0.1:4318" in empty


def test_request_parents_are_valid_sampled_traceparents() -> None:
    first, second = RequestParent.new(), RequestParent.new()
    assert first.trace_id != second.trace_id
    version, trace_id, span_id, flags = first.traceparent.split("-")
    assert (version, trace_id, span_id, flags) == ("00", first.trace_id, first.span_id, "01")
    assert len(trace_id) == 32 and len(span_id) == 16


def export_request(endpoint: str, traceparent: str, stage_ms: dict[str, list[float]]) -> None:
    """Exports, with the real SDK and OTLP exporter, one request's spans: a root under
    `traceparent`, then each stage's spans back to back, `stage_ms` long each."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = TracerProvider(resource=Resource.create({"service.name": "radixmesh-tokenizer"}))
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=5)))
    tracer = provider.get_tracer("test")
    at = 1_000 * MS
    parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    root = tracer.start_span("Generate", context=parent, start_time=at)
    for name, lengths in stage_ms.items():
        for length in lengths:
            child = tracer.start_span(name, context=set_span_in_context(root), start_time=at)
            at += int(length * MS)
            child.end(end_time=at)
    root.end(end_time=at)
    provider.shutdown()


def test_spans_really_exported_to_the_receiver_give_the_breakdown() -> None:
    collector = TraceCollector(f"127.0.0.1:{free_port()}").start()
    try:
        first, second = collector.traceparents(2)
        export_request(collector.address, first, {
            "tokenize": [1], "queue": [3], "prefill": [10, 20], "decode": [50],
            "detokenize": [4]})
        export_request(collector.address, second, {
            "tokenize": [3], "queue": [5], "prefill": [30], "decode": [70]})
        report = collector.report(roots_wait_s=10)
    finally:
        collector.stop()
    assert report["endpoint"] == collector.address
    assert (report["requests"], report["traced_requests"]) == (2, 2)
    stages = report["stages"]
    assert stages["prefill"]["median_ms"] == pytest.approx(30.0)  # 10 + 20 and 30
    assert stages["decode"]["median_ms"] == pytest.approx(60.0)
    assert stages["decode"]["p99_ms"] == pytest.approx(69.8)
    assert stages["detokenize"] == {"requests": 1, "median_ms": pytest.approx(4.0),
                                    "p99_ms": pytest.approx(4.0)}
    assert {stage: row["requests"] for stage, row in stages.items()} == {
        "tokenize": 2, "queue": 2, "prefill": 2, "decode": 2, "detokenize": 1}


def test_collect_returns_within_its_bound_when_nothing_is_exported() -> None:
    collector = TraceCollector(f"127.0.0.1:{free_port()}").start()
    try:
        collector.traceparents(3)
        report = collector.report(roots_wait_s=0.2)
    finally:
        collector.stop()
    assert (report["requests"], report["traced_requests"], report["stages"]) == (3, 0, {})


@pytest.mark.parametrize("workload", ["decode-b1", "multiturn-long"])
def test_the_flag_is_refused_where_no_mesh_spans_can_come(
        workload: str, capsys: pytest.CaptureFixture) -> None:
    argv = ["bench", "--workload", workload, "--trace-breakdown", "127.0.0.1:4318",
            "--path", "offline"]
    assert main(argv) == 2
    assert "offline path" in capsys.readouterr().err


@pytest.mark.parametrize("endpoint", ["4318", "localhost", "localhost:0", "host:http"])
def test_the_flag_takes_host_and_port(endpoint: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--workload", "decode-b1", "--trace-breakdown", endpoint]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
