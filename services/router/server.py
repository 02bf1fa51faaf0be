"""The router service: the public front door in front of several nodes (issue 21).

The same edge as a node's front door (`shared/front_door/`: OpenAI and native HTTP, gRPC
`Generation`, keys, limits, tracing) over a `NodeSet` core. Health (gRPC and `/health`) reads
SERVING / 200 while at least one node is usable; the router starts and keeps looking for
nodes without any, so it may start before them.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis_asyncio
from aiohttp import web

from radixmesh.services.router.config import RouterConfig
from radixmesh.services.router.metrics import RouterMetrics
from radixmesh.services.router.node_pool import NodePool
from radixmesh.services.router.node_set import NodeSet
from radixmesh.shared.api_keys import warn_if_open
from radixmesh.shared.front_door.grpc_decoding import add_tolerant_service
from radixmesh.shared.front_door.http_limits import grpc_limit_options, start_http
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.front_door.native_api import server_info
from radixmesh.shared.front_door.openai_api import OpenAIApi
from radixmesh.shared.front_door.servicer import GenerationServicer
from radixmesh.shared.grpc_service import ServiceServer, host_port, start_server
from radixmesh.shared.node_registry import NodeDirectory
from radixmesh.shared.page_index_layout import RedisLayout
from radixmesh.shared.prefix_oracle import BestOf, SentPrefixes
from radixmesh.shared.protos_gen import generate_pb2
from radixmesh.shared.redis_connect import connect, redacted
from radixmesh.shared.redis_prefixes import RedisPrefixes
from radixmesh.shared.replica_choice import make_policy
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder
from radixmesh.shared.tls import public_server_tls
from radixmesh.shared.tokenizer import load_tokenizer
from radixmesh.shared.tracing import ROUTER, start_tracing, stop_tracing

logger = logging.getLogger(__name__)
GENERATION = generate_pb2.DESCRIPTOR.services_by_name["Generation"]
GRPC_HARD_LIMIT_FACTOR = 4  # as the tokenizer's: INVALID_ARGUMENT below it, gRPC's own above

PAGE_INDEX_TIMEOUT_S = 0.05


class RouterServer:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.metrics = FrontDoorMetrics(config.served_model_name)
        self.router_metrics = RouterMetrics(self.metrics, config.served_model_name)
        self.api_keys = config.api_keys
        self.recorder: SpanRecorder = DISABLED
        self.nodes: NodeSet | None = None
        self._redis: redis_asyncio.Redis | None = None
        self._grpc: ServiceServer | None = None
        self._http: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self._serving = asyncio.Event()

    async def start(self) -> None:
        config = self.config
        self.recorder = start_tracing(ROUTER, config)
        tokenizer = await asyncio.to_thread(load_tokenizer, config.model_path, config.revision,
                                            config.hf_token)
        directory = (NodeDirectory(config.redis_url, config.registry_key_prefix)
                     if config.redis_url else None)

        def pool(on_change, forget) -> NodePool:
            return NodePool(config.node_urls, directory, config.node_key,
                            config.node_retry_backoff, config.node_retry_backoff_max,
                            on_change, forget)

        self.nodes = NodeSet(pool, tokenizer, make_policy(config.policy, config.choice_rule),
                             self._oracle(), self.metrics, self.router_metrics, self.recorder,
                             config.discovery_interval,
                             config.enable_special_tokens_in_content)
        warn_if_open(self.api_keys, config.host, "the router")
        await self._start_grpc()
        app = OpenAIApi(self.nodes, self.metrics, config, self.recorder, self.api_keys,
                        self.server_info).build_app()
        self._http, _ = await start_http(app, config)
        self._tasks = [asyncio.create_task(self.nodes.run(), name="nodes"),
                       asyncio.create_task(self._track_health(), name="health")]
        logger.info("router: HTTP on %s:%d, gRPC on %s:%d, policy %s, nodes %s%s",
                    config.host, config.port, config.host, config.grpc_port, config.policy,
                    ", ".join(config.node_urls) or "-",
                    f", registry {redacted(config.redis_url)}" if config.redis_url else "")

    def _oracle(self) -> BestOf:
        """What was routed where, and with Redis the page index too (the best of both, per
        node). The index answers once a node has said how it names its pages (its model
        info's key namespace: `NodeSet` passes it on); until then, and for nodes whose
        worker keeps no KV, it answers nothing held."""
        sent = SentPrefixes(())
        if self.config.redis_url is None:
            return BestOf(sent)
        self._redis = connect(self.config.redis_url, timeout_s=1.0)
        return BestOf(sent, RedisPrefixes(
            self._redis, RedisLayout(self.config.page_index_key_prefix),
            lambda: [node.node_id for node in self.nodes.pool.usable()],
            timeout_s=PAGE_INDEX_TIMEOUT_S))

    async def wait_ready(self) -> None:
        await self._serving.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.cleanup()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._redis is not None:
            await self._redis.aclose()
        await asyncio.to_thread(stop_tracing, self.recorder)
        self.recorder = DISABLED

    async def server_info(self) -> dict:
        """The front door's server info document, with the nodes and what each was sent."""
        return {**await server_info(self.nodes, self.config),
                "nodes": self.nodes.nodes_report(), "policy": self.config.policy}

    async def _start_grpc(self) -> None:
        config = self.config
        servicer = GenerationServicer(self.nodes, self.metrics, config.served_model_name,
                                      config.max_request_bytes, self.recorder,
                                      limits=config.sampling_limits,
                                      max_streams=config.max_concurrent_streams,
                                      api_keys=self.api_keys,
                                      max_queued_requests=config.max_queued_requests,
                                      server_info=self.server_info)
        limit = config.max_request_bytes * GRPC_HARD_LIMIT_FACTOR
        self._grpc = await start_server(
            host_port(config.host, config.grpc_port),
            lambda server: add_tolerant_service(GENERATION, servicer, server),
            [GENERATION.full_name], options=[("grpc.max_receive_message_length", limit),
                                             *grpc_limit_options(config)],
            tls=public_server_tls(config))

    async def _track_health(self) -> None:
        while True:
            await self.nodes.wait_ready()
            await self._grpc.set_serving(True)
            self._serving.set()
            await self.nodes.wait_disconnected()
            self._serving.clear()
            await self._grpc.set_serving(False)


async def serve(config: RouterConfig) -> None:
    server = RouterServer(config)
    try:
        await server.start()
        await asyncio.Event().wait()
    finally:
        await server.stop()
