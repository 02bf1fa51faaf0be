"""A real OTLP/gRPC trace receiver that keeps spans in memory.

Built on `opentelemetry-proto`'s generated `TraceServiceServicer`, so services export to it
exactly as they would to Jaeger or a collector. `radixmesh bench --trace-breakdown` runs one
to read back the spans its own requests caused; the tests run one against the real mesh.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str  # 32 hex
    span_id: str   # 16 hex
    parent_span_id: str  # "" for a root
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    events: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()  # (trace id, span id) each
    kind: int = 0

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass
class SpanReceiver:
    """`start()` listens on `address` (port 0: any free one, read `.address` after)."""

    address: str = "127.0.0.1:0"
    spans: list[ReceivedSpan] = field(default_factory=list)
    _server: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._arrived = threading.Condition(self._lock)

    def start(self) -> SpanReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), server)
        host = self.address.rsplit(":", 1)[0]
        port = server.add_insecure_port(self.address)
        if port == 0:
            raise OSError(f"the OTLP receiver could not listen on {self.address}")
        server.start()
        self._server, self.address = server, f"{host}:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None

    def add(self, spans: list[ReceivedSpan]) -> None:
        with self._arrived:
            self.spans.extend(spans)
            self._arrived.notify_all()

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.snapshot() if span.trace_id == trace_id]

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool],
                 timeout: float = 15.0) -> list[ReceivedSpan]:
        """Blocks until `done(spans so far)` holds; returns them either way at the deadline."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not done(list(self.spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(left)
            return list(self.spans)


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: SpanReceiver) -> None:
        self._receiver = receiver

    def Export(self, request, context):  # noqa: N802 (the generated name)
        received = []
        for resource_spans in request.resource_spans:
            service = _attributes(resource_spans.resource.attributes).get("service.name", "")
            for scope_spans in resource_spans.scope_spans:
                received.extend(_span(service, span) for span in scope_spans.spans)
        self._receiver.add(received)
        return trace_service_pb2.ExportTraceServiceResponse()


def _span(service: str, span) -> ReceivedSpan:
    return ReceivedSpan(
        service=service, name=span.name, trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
        start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
        attributes=_attributes(span.attributes), status_code=span.status.code,
        events=tuple(event.name for event in span.events),
        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
        kind=span.kind)


def _attributes(pairs) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    return getattr(value, kind) if kind else None
