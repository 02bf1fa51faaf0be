"""`radixmesh serve worker`: the Worker gRPC service over the chosen ModelWorker."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.metrics import WorkerMetrics
from radixmesh.services.worker.servicer import WorkerServicer
from radixmesh.services.worker.worker_registry import build_worker
from radixmesh.shared.grpc_service import host_port, start_server
from radixmesh.shared.model_location import model_name
from radixmesh.shared.protos_gen import internal_pb2, internal_pb2_grpc
from radixmesh.shared.tls import internal_server_tls
from radixmesh.shared.tracing import start_tracing, stop_tracing

logger = logging.getLogger(__name__)
SERVICE_NAME = internal_pb2.DESCRIPTOR.services_by_name["Worker"].full_name


async def serve(config: WorkerConfig) -> None:
    """Loads the worker, then serves until cancelled. Health turns SERVING once loaded."""
    # The worker is built on the thread that will execute its steps: torch state stays there.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-step")
    recorder = start_tracing("worker", config)
    try:
        worker = await asyncio.get_running_loop().run_in_executor(
            executor, build_worker, config)
        # The name the front door serves by default; the worker has no --served-model-name.
        metrics = WorkerMetrics(model_name(config.model_path))
        if config.metrics_port:
            metrics.serve_http(config.host, config.metrics_port)
        servicer = WorkerServicer(worker, executor, metrics, recorder)
        server = await start_server(
            host_port(config.host, config.port),
            lambda grpc_server: internal_pb2_grpc.add_WorkerServicer_to_server(servicer,
                                                                               grpc_server),
            [SERVICE_NAME], tls=internal_server_tls(config))
        info = worker.info()
        logger.info("%s worker serving %s on port %d: %d pages of %d tokens, %d slots "
                    "(instance %s, mesh protocol %d)", worker.name, info.model_id, server.port,
                    info.num_pages, info.page_size, info.max_running_requests,
                    servicer.hello.instance_id, servicer.hello.protocol_version)
        await server.serve_until_stopped()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        stop_tracing(recorder)  # flushes what is queued, for SHUTDOWN_FLUSH_S at most
