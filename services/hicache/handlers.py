"""ReadPages without protobuf's copies of the pages (page_batch_wire.py): the HiCache service's
registration on a gRPC server (the generated handlers, except that ReadPages' responses leave
the servicer already serialized, so gRPC sends its bytes as they are), and the asking side's
call, which hands over each response's bytes unparsed."""

from __future__ import annotations

from typing import Any

import grpc

from radixmesh.shared.protos_gen import hicache_pb2, hicache_pb2_grpc

RAW_RESPONSES = ("ReadPages",)
_SERVICE = hicache_pb2.DESCRIPTOR.services_by_name["HiCache"]
READ_PAGES_PATH = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['ReadPages'].name}"


class _Captured:
    """Stands in for a server while the generated code registers on it."""

    service = ""
    handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_hicache_servicer(servicer: hicache_pb2_grpc.HiCacheServicer,
                         server: grpc.aio.Server) -> None:
    captured = _Captured()
    hicache_pb2_grpc.add_HiCacheServicer_to_server(servicer, captured)
    handlers = captured.handlers
    for name in RAW_RESPONSES:
        # No serializer: gRPC sends the bytes the servicer yields.
        handlers[name] = handlers[name]._replace(response_serializer=None)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(captured.service, handlers),))
    server.add_registered_method_handlers(captured.service, handlers)


def read_pages_raw(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable:
    """ReadPages on `channel`, each PageBatch it streams back as its serialized bytes."""
    return channel.unary_stream(READ_PAGES_PATH,
                                request_serializer=hicache_pb2.PageRead.SerializeToString,
                                response_deserializer=None)
