"""The router service: the public front door in front of several nodes (issue 21).

The same edge as a node's front door (`shared/front_door/`: OpenAI and native HTTP, gRPC
`Generation`, keys, limits, tracing, the servers of `server.py`) over a `NodeSet` core.
Health (gRPC and `/health`) reads SERVING / 200 while at least one node is usable; the router
starts and keeps looking for nodes without any, so it may start before them.
"""

from __future__ import annotations

import logging

import redis.asyncio as redis_asyncio

from radixmesh.services.router.config import RouterConfig
from radixmesh.services.router.metrics import RouterMetrics
from radixmesh.services.router.node_link import NodeLinks
from radixmesh.services.router.node_pool import NodePool
from radixmesh.services.router.node_set import NodeSet
from radixmesh.shared.front_door.native_api import server_info
from radixmesh.shared.front_door.server import FrontDoorServer, serve_until_cancelled
from radixmesh.shared.node_registry import NodeDirectory
from radixmesh.shared.page_index_layout import RedisLayout
from radixmesh.shared.prefix_oracle import BestOf, SentPrefixes
from radixmesh.shared.redis_connect import connect, redacted
from radixmesh.shared.redis_prefixes import RedisPrefixes
from radixmesh.shared.replica_choice import make_policy
from radixmesh.shared.tokenizer import TextTokenizer
from radixmesh.shared.tracing import ROUTER

logger = logging.getLogger(__name__)


class RouterServer(FrontDoorServer):
    role = ROUTER
    what = "the router"

    def __init__(self, config: RouterConfig) -> None:
        super().__init__(config)
        self.config: RouterConfig = config
        self.router_metrics = RouterMetrics(self.metrics, config.served_model_name)
        self._redis: redis_asyncio.Redis | None = None

    @property
    def nodes(self) -> NodeSet | None:
        return self.core

    def make_core(self, tokenizer: TextTokenizer) -> NodeSet:
        config = self.config
        directory = (NodeDirectory(config.redis_url, config.registry_key_prefix)
                     if config.redis_url else None)

        links = NodeLinks(config.node_key, config.node_client_tls(), config.node_tls_on)

        def pool(on_change, forget) -> NodePool:
            return NodePool(config.node_targets, directory, links,
                            config.node_retry_backoff, config.node_retry_backoff_max,
                            on_change, forget, self.router_metrics.node_failed)

        return NodeSet(pool, tokenizer, make_policy(config.policy, config.choice_rule),
                       self._oracle(), self.metrics, self.router_metrics, self.recorder,
                       config.discovery_interval, config.enable_special_tokens_in_content)

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
            timeout_s=self.config.page_index_timeout))

    async def started(self) -> None:
        config = self.config
        logger.info("router: HTTP on %s:%d, gRPC on %s:%d, policy %s, nodes %s%s%s",
                    config.host, config.port, config.host, config.grpc_port, config.policy,
                    ", ".join(config.node_urls) or "-",
                    f", registry {redacted(config.redis_url)}" if config.redis_url else "",
                    ", TLS to every node" if config.node_tls_on else "")

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def server_info(self) -> dict:
        """The front door's server info document, with the nodes and what each was sent."""
        return {**await server_info(self.core, self.config),
                "nodes": self.nodes.nodes_report(), "policy": self.config.policy}


async def serve(config: RouterConfig) -> None:
    await serve_until_cancelled(RouterServer(config))
