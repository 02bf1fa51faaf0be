"""Fixtures for tracing tests.

- `span_receiver`: the real OTLP/gRPC receiver (radixmesh/bench/span_receiver.py) on a free
  localhost port; services started with `--enable-trace --otlp-traces-endpoint
  <its address>` export to it over the wire.
- `memory_spans`: a `SpanRecorder` on the real SDK exporting synchronously into memory, for
  plain objects tested without gRPC (`.recorder`, `.finished()` the SDK's ReadableSpans).
- `sampled_trace` / `unsampled_trace`: request contexts as the front door hands them on.
- `mesh_model_path`: the mesh tests' tiny model, one per session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from radixmesh.bench.span_receiver import SpanReceiver
from radixmesh.shared.span_recorder import SpanRecorder
from radixmesh.shared.trace_context import TraceContext
from tests.mesh.conftest import mesh_model_path  # noqa: F401 (the mesh tests' model fixture)

SAMPLED = TraceContext("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
UNSAMPLED = TraceContext("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")


@pytest.fixture
def span_receiver() -> Iterator[SpanReceiver]:
    receiver = SpanReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@dataclass
class MemorySpans:
    recorder: SpanRecorder
    exporter: InMemorySpanExporter

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.finished() if span.name == name]


@pytest.fixture
def memory_spans() -> Iterator[MemorySpans]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield MemorySpans(SpanRecorder(provider.get_tracer("test"), provider), exporter)
    finally:
        provider.shutdown()


@pytest.fixture
def sampled_trace() -> TraceContext:
    return SAMPLED


@pytest.fixture
def unsampled_trace() -> TraceContext:
    return UNSAMPLED


@pytest.fixture
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variable from the machine leaks into a test."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
