#!/usr/bin/env python3
"""An OTLP/gRPC receiver that takes every span a traced mesh exports and keeps only a count,
so that a `mesh-trace` benchmark pays the real export cost (spans serialised and sent over
gRPC) without a Jaeger on the GPU machine. Runs until SIGTERM; prints the count every 30 s
and at exit.

    python span_sink.py 127.0.0.1:4317
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class CountingSink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 (the generated name)
        count = sum(len(scope.spans) for resource in request.resource_spans
                    for scope in resource.scope_spans)
        with self._lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4317"
    sink = CountingSink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    if server.add_insecure_port(address) == 0:
        sys.exit(f"span sink: cannot listen on {address}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"span sink listening on {address}", flush=True)
    while not stop.wait(30):
        print(f"spans received: {sink.spans}", flush=True)
    server.stop(grace=2).wait()
    print(f"spans received: {sink.spans} (final)", flush=True)


if __name__ == "__main__":
    main()
