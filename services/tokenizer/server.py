"""The tokenizer service (the front door): gRPC `Generation` and OpenAI-compatible HTTP.

`serve(config)` runs until cancelled. Health (gRPC health service and `/health`) reads
SERVING / 200 only while the router is connected to the scheduler and the detokenizer; the
service starts and keeps retrying without them, so the mesh's processes may start in any order.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.tokenizer.mesh_link import GrpcMeshLink
from radixmesh.services.tokenizer.replicas import ReplicaSet
from radixmesh.services.tokenizer.router import Router
from radixmesh.shared.api_keys import warn_if_open
from radixmesh.shared.front_door.grpc_decoding import add_tolerant_service
from radixmesh.shared.front_door.http_limits import grpc_limit_options, start_http
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.front_door.native_api import server_info
from radixmesh.shared.front_door.openai_api import OpenAIApi
from radixmesh.shared.front_door.servicer import GenerationServicer
from radixmesh.shared.grpc_service import ServiceServer, host_port, start_server
from radixmesh.shared.node_registry import NodeLoad, NodeRegistration
from radixmesh.shared.protos_gen import generate_pb2
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder
from radixmesh.shared.tls import internal_client_tls, public_server_tls
from radixmesh.shared.tokenizer import load_tokenizer
from radixmesh.shared.tracing import FRONT_DOOR, start_tracing, stop_tracing

logger = logging.getLogger(__name__)
GENERATION = generate_pb2.DESCRIPTOR.services_by_name["Generation"]
GENERATION_SERVICE = GENERATION.full_name
# gRPC itself refuses messages past this multiple of the limit; below it the servicer answers
# INVALID_ARGUMENT with the sizes, which says more than RESOURCE_EXHAUSTED would.
GRPC_HARD_LIMIT_FACTOR = 4


class TokenizerServer:
    """The front door's servers and router, started and stopped together."""

    def __init__(self, config: TokenizerConfig) -> None:
        self.config = config
        self.metrics = FrontDoorMetrics(config.served_model_name)
        # One link per data-parallel replica, each to its scheduler and the one detokenizer.
        self.links = [GrpcMeshLink(address, config.detokenizer_address,
                                   tls=internal_client_tls(config))
                      for address in config.scheduler_addresses]
        self.router: Router | ReplicaSet | None = None
        self._grpc: ServiceServer | None = None
        self._http: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self._serving = asyncio.Event()  # health says SERVING
        self.recorder: SpanRecorder = DISABLED  # until `start`, and while tracing is off
        self.api_keys = config.api_keys  # read once: the flags', else $RADIXMESH_API_KEY's
        self.registration: NodeRegistration | None = None  # with --registry-redis-url

    async def start(self) -> None:
        # The front door's sampler decides for the whole mesh (shared/tracing.py).
        self.recorder = start_tracing(FRONT_DOOR, self.config)
        tokenizer = await asyncio.to_thread(load_tokenizer, self.config.model_path,
                                            self.config.revision, self.config.hf_token)
        routers = [Router(link, tokenizer, self.metrics, allow_special_tokens_in_content=(
                       self.config.enable_special_tokens_in_content)) for link in self.links]
        self.router = (routers[0] if len(routers) == 1
                       else ReplicaSet(routers, metrics=self.metrics))
        warn_if_open(self.api_keys, self.config.host)
        await self._start_grpc()
        await self._start_http()
        self._tasks = [asyncio.create_task(self.router.run(), name="router"),
                       asyncio.create_task(self._track_health(), name="health")]
        if self.config.registry_redis_url:
            self.registration = NodeRegistration(
                self.config.registry_redis_url, self.config.registry_node_id,
                self.config.registry_address, self._node_load, self.config.registry_key_prefix,
                self.config.registry_heartbeat, self.config.registry_ttl)
            self._tasks.append(asyncio.create_task(self.registration.run(), name="registry"))
        logger.info("front door: HTTP on %s:%d, gRPC on %s:%d, model %r",
                    self.config.host, self.config.port, self.config.host,
                    self.config.grpc_port, self.config.served_model_name)

    async def wait_ready(self) -> None:
        """Until the router is connected and health reports SERVING."""
        await self._serving.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.registration is not None:  # first: routers stop sending here
            await self.registration.close()
        if self._http is not None:
            await self._http.cleanup()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        for link in self.links:
            await link.close()
        # Last, so the spans of requests ended by the servers' stop are flushed too; the
        # flush blocks (at most 5 s), so off the event loop.
        await asyncio.to_thread(stop_tracing, self.recorder)
        self.recorder = DISABLED

    async def _start_grpc(self) -> None:
        servicer = GenerationServicer(self.router, self.metrics, self.config.served_model_name,
                                      self.config.max_request_bytes, self.recorder,
                                      limits=self.config.sampling_limits,
                                      max_streams=self.config.max_concurrent_streams,
                                      api_keys=self.api_keys,
                                      max_queued_requests=self.config.max_queued_requests,
                                      server_info=lambda: server_info(self.router, self.config))
        limit = self.config.max_request_bytes * GRPC_HARD_LIMIT_FACTOR
        self._grpc = await start_server(
            host_port(self.config.host, self.config.grpc_port),
            # Malformed requests end INVALID_ARGUMENT, not UNKNOWN (grpc_decoding.py).
            lambda server: add_tolerant_service(GENERATION, servicer, server),
            [GENERATION_SERVICE], options=[("grpc.max_receive_message_length", limit),
                                           *grpc_limit_options(self.config)],
            tls=public_server_tls(self.config))

    async def _start_http(self) -> None:
        app = OpenAIApi(self.router, self.metrics, self.config, self.recorder,
                        self.api_keys).build_app()
        # With --max-connections, --http-header-timeout and client disconnects as aborts.
        self._http, _ = await start_http(app, self.config)

    async def _node_load(self) -> NodeLoad | None:
        """What the registry's heartbeat says; None (no beat) while not serving: a router
        must not send here then."""
        if not self._serving.is_set():
            return None
        load = await self.router.get_load()
        return NodeLoad(load.num_running_reqs, load.num_queue_reqs, load.token_usage)

    async def _track_health(self) -> None:
        """Mirrors the router's connection into the gRPC health service."""
        while True:
            await self.router.wait_ready()
            await self._grpc.set_serving(True)
            self._serving.set()
            await self.router.wait_disconnected()
            self._serving.clear()
            await self._grpc.set_serving(False)

async def serve(config: TokenizerConfig) -> None:
    """Runs the front door until cancelled; stops its servers cleanly on the way out."""
    server = TokenizerServer(config)
    try:
        await server.start()
        await asyncio.Event().wait()
    finally:
        await server.stop()


