"""A node that a router finds usable and that fails every request before its first token: a
real gRPC `Generation` server on a free loopback port whose GetModelInfo answers as a real
node's does, and whose Generate accepts the stream (sends its headers) and then ends it with
UNAVAILABLE, as a node dying under a request would."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc

from radixmesh.shared.protos_gen import generate_pb2, generate_pb2_grpc


class FailingNode(generate_pb2_grpc.GenerationServicer):
    def __init__(self, model_info: generate_pb2.ModelInfo) -> None:
        self._model_info = model_info
        self._lock = threading.Lock()
        self.generate_calls = 0

    def GetModelInfo(self, request, context):  # noqa: N802 (gRPC's name)
        return self._model_info

    def Generate(self, request, context):  # noqa: N802
        with self._lock:
            self.generate_calls += 1
        context.send_initial_metadata(())  # the stream was accepted...
        context.abort(grpc.StatusCode.UNAVAILABLE, "the node went away")  # ...and dies
        yield  # a generator: gRPC's server-streaming form (never reached)


@contextlib.contextmanager
def failing_node(model_info: generate_pb2.ModelInfo) -> Iterator[tuple[str, FailingNode]]:
    """(its address, the servicer) while it runs."""
    servicer = FailingNode(model_info)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    generate_pb2_grpc.add_GenerationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None)
