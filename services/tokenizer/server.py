"""The tokenizer service (the front door): gRPC `Generation` and OpenAI-compatible HTTP.

`serve(config)` runs until cancelled. Health (gRPC health service and `/health`) reads
SERVING / 200 only while the router is connected to the scheduler and the detokenizer; the
service starts and keeps retrying without them, so the mesh's processes may start in any order.
The servers are every front door's (`shared/front_door/server.py`); here, the core (one
`Router` per data-parallel replica) and the node's registration for routers.
"""

from __future__ import annotations

import logging

from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.tokenizer.detokenizer_link import GrpcDetokenizerLink
from radixmesh.services.tokenizer.mesh_link import GrpcMeshLink, GrpcSchedulerLink
from radixmesh.services.tokenizer.replicas import ReplicaSet
from radixmesh.services.tokenizer.router import Router
from radixmesh.services.tokenizer.text_feed import TextFeed
from radixmesh.shared.front_door.server import FrontDoorServer, serve_until_cancelled
from radixmesh.shared.node_registry import NodeLoad, NodeRegistration
from radixmesh.shared.tls import internal_client_tls
from radixmesh.shared.tokenizer import TextTokenizer
from radixmesh.shared.tracing import FRONT_DOOR

logger = logging.getLogger(__name__)


class TokenizerServer(FrontDoorServer):
    """The front door's servers and router, started and stopped together."""

    role = FRONT_DOOR  # its sampler decides for the whole mesh (shared/tracing.py)

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__(config)
        self.config: TokenizerConfig = config
        # One link per data-parallel replica to its scheduler, and one subscription to the
        # detokenizer for them all (a lone replica's link holds both).
        tls = internal_client_tls(config)
        addresses = config.scheduler_addresses
        self.detokenizer_link: GrpcDetokenizerLink | None = None
        if len(addresses) == 1:
            self.links: list[GrpcSchedulerLink] = [
                GrpcMeshLink(addresses[0], config.detokenizer_address, tls=tls)]
        else:
            self.detokenizer_link = GrpcDetokenizerLink(config.detokenizer_address, tls=tls)
            self.links = [GrpcSchedulerLink(address, tls=tls) for address in addresses]
        self.registration: NodeRegistration | None = None  # with --registry-redis-url

    @property
    def router(self) -> Router | ReplicaSet | None:
        return self.core

    def make_core(self, tokenizer: TextTokenizer) -> Router | ReplicaSet:
        special = self.config.enable_special_tokens_in_content
        interval = self.config.stream_interval
        if self.detokenizer_link is None:
            return Router(self.links[0], tokenizer, self.metrics,
                          allow_special_tokens_in_content=special, stream_interval=interval)
        feed = TextFeed(self.detokenizer_link)
        routers = [Router(link, tokenizer, self.metrics, allow_special_tokens_in_content=special,
                          feed=feed, stream_interval=interval) for link in self.links]
        return ReplicaSet(routers, feed, metrics=self.metrics)

    async def started(self) -> None:
        config = self.config
        if config.registry_redis_url:
            self.registration = NodeRegistration(
                config.registry_redis_url, config.registry_node_id, config.registry_address,
                self._node_load, config.registry_key_prefix, config.registry_heartbeat,
                config.registry_ttl)
            self.spawn(self.registration.run(), "registry")
        logger.info("front door: HTTP on %s:%d, gRPC on %s:%d, model %r", config.host,
                    config.port, config.host, config.grpc_port, config.served_model_name)

    async def withdraw(self) -> None:
        if self.registration is not None:  # first: routers stop sending here
            await self.registration.close()

    async def close(self) -> None:
        for link in self.links:
            await link.close()
        if self.detokenizer_link is not None:
            await self.detokenizer_link.close()

    async def _node_load(self) -> NodeLoad | None:
        """What the registry's heartbeat says; None (no beat) while not serving: a router
        must not send here then."""
        if not self.serving:
            return None
        load = await self.core.get_load()
        return NodeLoad(load.num_running_reqs, load.num_queue_reqs, load.token_usage)


async def serve(config: TokenizerConfig) -> None:
    """Runs the front door until cancelled; stops its servers cleanly on the way out."""
    await serve_until_cancelled(TokenizerServer(config))
