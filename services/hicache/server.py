"""`radixmesh serve hicache`: the HiCache gRPC service (design §4)."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from radixmesh.services.hicache.cache import HiCache
from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.services.hicache.malloc_tuning import keep_large_buffers
from radixmesh.services.hicache.metrics import HiCacheMetrics
from radixmesh.services.hicache.page_index import IndexStartError, PageIndex, make_page_index
from radixmesh.services.hicache.peer_link import PeerFetcher
from radixmesh.services.hicache.servicer import HiCacheServicer
from radixmesh.shared.api_keys import is_loopback
from radixmesh.shared.grpc_service import ServiceServer, host_port, start_server
from radixmesh.shared.protos_gen import hicache_pb2, hicache_pb2_grpc
from radixmesh.shared.tls import internal_client_tls, internal_server_tls
from radixmesh.shared.tracing import start_tracing, stop_tracing

logger = logging.getLogger(__name__)
SERVICE_NAME = hicache_pb2.DESCRIPTOR.services_by_name["HiCache"].full_name
# ReadPages' responses leave the servicer already serialized (page_batch_wire.py): its
# handler is registered without a serializer, so gRPC sends their bytes as they are.
RAW_RESPONSES = ("ReadPages",)


class _Captured:
    """Stands in for a server while the generated code registers on it."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Any] = {}

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


async def serve(config: HiCacheConfig) -> None:
    """Serves until cancelled. The pool is made at the scheduler's first Attach; on the way
    out, however it comes (cancellation included), the pool's segment is unlinked."""
    keep_large_buffers()
    index = make_page_index(config)
    cache = HiCache(config, index)
    # The service is not told which model it caches (nothing it is sent names one), so the
    # label stays empty until a --served-model-name reaches it.
    metrics = HiCacheMetrics(cache.snapshot, model_name="",
                             index_stats=None if index is None else index.stats)
    recorder = start_tracing("hicache", config)
    fetcher = PeerFetcher(cache, internal_client_tls(config))
    try:
        if config.metrics_port:
            metrics.serve_http(config.host, config.metrics_port)
        warn_if_pages_open(config)
        servicer = HiCacheServicer(cache, recorder, index, fetcher)
        server = await start_server(
            host_port(config.host, config.port),
            lambda grpc_server: add_hicache_servicer(servicer, grpc_server),
            [SERVICE_NAME], tls=internal_server_tls(config))
        if index is not None:
            await _start_index(index, config, server)
        logger.info("hicache serving on port %d (L3: %s)", server.port,
                    config.hicache_storage_backend or "none")
        await server.serve_until_stopped()
    finally:
        await fetcher.close()
        metrics.close()
        cache.close()
        if index is not None:
            await index.close()
        stop_tracing(recorder)  # flushes what is queued, for SHUTDOWN_FLUSH_S at most


def warn_if_pages_open(config: HiCacheConfig) -> bool:
    """Logs a warning when other nodes may read this node's KV pages (ReadPages) with no
    mutual TLS to tell who they are; True if it warned."""
    if config.internal_tls_on or is_loopback(config.host):
        return False
    logger.warning("hicache listens on %s without internal mutual TLS: anyone who can reach "
                   "it may read this node's KV pages (and so what its prompts held). Set "
                   "--internal-ssl-certfile/--internal-ssl-keyfile/--internal-ssl-ca-certs, "
                   "or bind --host 127.0.0.1", config.host)
    return True


async def _start_index(index: PageIndex, config: HiCacheConfig, server: ServiceServer) -> None:
    """Starts advertising this node's pages. Credentials Redis refuses stop the service here,
    before it reports SERVING (so `radixmesh up` fails at once, saying why); a Redis that does
    not answer does not: the index fills once it does."""
    try:
        await index.start(config.hicache_advertise_address or host_port(config.host, server.port))
    except IndexStartError as error:
        logger.error("%s", error)
        await server.stop(0)
        raise
