"""`radixmesh serve scheduler`: connects to its peers, then serves the Scheduler service.

Startup: wait (up to --peer-timeout) for a worker and a detokenizer that pass the handshake,
size the Scheduler from the worker's info, open the Execute and Tokens streams, start the
step loop, then report SERVING. From then on the scheduler outlives its peers: losing the
worker or the detokenizer turns health NOT_SERVING, fails the requests that depended on it
with UNAVAILABLE, and it serves again once the peer is back (`supervisor.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.detokenizer_link import DetokenizerLink
from radixmesh.services.scheduler.hicache_link import HiCacheLink
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.services.scheduler.servicer import SchedulerServicer
from radixmesh.services.scheduler.supervisor import LinkSupervisor, PeerLostError
from radixmesh.services.scheduler.worker_link import WorkerLink
from radixmesh.shared import wire
from radixmesh.shared.errors import UnavailableError
from radixmesh.shared.grpc_service import abort_with, host_port, start_server
from radixmesh.shared.mesh_info import ModelInfo
from radixmesh.shared.mesh_protocol import Hello
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.span_recorder import SpanRecorder
from radixmesh.shared.tls import internal_client_tls, internal_server_tls
from radixmesh.shared.tracing import start_tracing, stop_tracing

logger = logging.getLogger(__name__)
SERVICE_NAME = internal_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name

__all__ = ["PeerLostError", "serve"]


async def serve(config: SchedulerConfig) -> None:
    """Serves until cancelled; raises PeerLostError if no usable worker or detokenizer shows
    up within --peer-timeout at startup."""
    recorder = start_tracing("scheduler", config)
    try:
        await _serve(config, recorder)
    finally:
        stop_tracing(recorder)  # flushes what is queued, for SHUTDOWN_FLUSH_S at most


async def _serve(config: SchedulerConfig, recorder: SpanRecorder) -> None:
    hello = Hello("scheduler", implementation="scheduler")
    tls = internal_client_tls(config)
    worker = WorkerLink(config.worker_address, hello, config.worker_step_timeout, tls)
    detokenizer = DetokenizerLink(config.detokenizer_address, hello, tls)
    supervisor = LinkSupervisor(config, worker, detokenizer, _hicache_factory(config, recorder),
                                recorder)
    try:
        logger.info("waiting for the worker at %s and the detokenizer at %s",
                    config.worker_address, config.detokenizer_address)
        await supervisor.start()
        servicer = LinkedSchedulerServicer(supervisor, hello)
        server = await start_server(
            host_port(config.host, config.port),
            lambda grpc_server: internal_pb2_grpc.add_SchedulerServicer_to_server(
                servicer, grpc_server),
            [SERVICE_NAME], tls=internal_server_tls(config))
        supervisor.set_serving = server.set_serving
        logger.info("scheduler serving on port %d (instance %s, mesh protocol %d)", server.port,
                    hello.instance_id, hello.protocol_version)
        try:
            await supervisor.run()
        finally:
            await server.stop()
    finally:
        await worker.close()
        await detokenizer.aclose()


def _hicache_factory(config: SchedulerConfig,
                     recorder: SpanRecorder) -> Callable[[Scheduler], HiCacheLink | None]:
    """A hicache link per Scheduler (each new worker gets a new one, which attaches the L2
    pool afresh); None when the hierarchical cache is off."""
    def make(scheduler: Scheduler) -> HiCacheLink | None:
        if scheduler.host_cache is None:
            return None
        logger.info("hierarchical cache: hicache service at %s", config.hicache_address)
        return HiCacheLink(config.hicache_address, scheduler.host_cache, scheduler.worker,
                           scheduler.stats, lambda: scheduler.waiting, recorder,
                           internal_client_tls(config), config.hicache_remote_timeout)
    return make


class LinkedSchedulerServicer(SchedulerServicer):
    """The Scheduler service across worker swaps: model info is the current worker's, and
    the handshake answers for this scheduler."""

    def __init__(self, supervisor: LinkSupervisor, hello: Hello) -> None:
        assert supervisor.loop is not None and supervisor.model_info is not None
        super().__init__(supervisor.loop, supervisor.model_info)
        self._supervisor = supervisor
        self._hello = hello

    @property
    def model_info(self) -> ModelInfo:
        """The current worker's (its context and vocabulary bound the entry checks); the last
        one's while none is attached, whose requests then fail UNAVAILABLE anyway."""
        return self._supervisor.model_info or self._info

    async def GetInfo(self, request: common_pb2.Empty,
                      context: grpc.aio.ServicerContext) -> generate_pb2.ModelInfo:
        info = self._supervisor.model_info
        if info is None:
            await abort_with(context, UnavailableError("no worker yet"))
        return wire.model_info_to_proto(info)

    async def Hello(self, request: internal_pb2.PeerHello,
                    context: grpc.aio.ServicerContext) -> internal_pb2.PeerHello:
        hello = Hello(self._hello.service, self._hello.implementation,
                      self._supervisor.model_id or "", self._hello.capabilities,
                      protocol_version=self._hello.protocol_version,
                      instance_id=self._hello.instance_id)
        return internal_pb2.PeerHello(**hello.fields())
