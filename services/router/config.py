"""The router service's configuration: every field is a CLI flag of the same name.

The public flags (ports, keys, TLS, limits, model) are every front door's
(`shared/front_door/flags.py`); here, which nodes there are, how the router dials them
(`node_tls.py`: `--node-ssl-*`) and how one is chosen. Nodes come from `--node-urls` (a static
list, retried with backoff while down) and/or `--redis-url` (the nodes' own registrations, and
the Redis page index as the exact prefix oracle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from radixmesh.services.router.node_tls import NodeTarget, NodeTLSFlags, node_target
from radixmesh.shared.front_door.flags import FrontDoorFlags
from radixmesh.shared.node_registry import DEFAULT_PREFIX
from radixmesh.shared.page_index_layout import DEFAULT_KEY_PREFIX
from radixmesh.shared.redis_connect import check_redis_url
from radixmesh.shared.redis_prefixes import DEFAULT_TIMEOUT_S
from radixmesh.shared.replica_choice import POLICIES, ChoiceRule

NODE_API_KEY_ENV = "RADIXMESH_NODE_API_KEY"


@dataclass(frozen=True)
class RouterConfig(NodeTLSFlags, FrontDoorFlags):
    """Invariant after construction: at least one of `node_urls` / `redis_url` is set,
    `node_urls` holds one URL per item, and each parses as a `NodeTarget`."""

    node_urls: tuple[str, ...] = field(default=(), metadata={
        "help": "a node's front-door gRPC address (HOST:PORT, or grpcs://HOST:PORT for TLS to "
                "that node alone); repeat, or comma-separate, for several. A node that fails "
                "is retried with backoff"})
    redis_url: str | None = field(default=None, metadata={
        "help": "Redis where nodes register (--registry-redis-url of each node) and whose page "
                "index tells which node holds a prompt's pages"})
    policy: str = field(default="cache_aware", metadata={
        "choices": tuple(POLICIES.names()),
        "help": "how a node is chosen: cache_aware (the node holding most of the prompt, "
                "unless loads are far apart), power_of_two, round_robin or random"})
    cache_threshold: float = field(default=0.5, metadata={
        "help": "cache_aware: share of the prompt a node must hold to be preferred over the "
                "least loaded"})
    balance_abs_threshold: int = field(default=32, metadata={
        "help": "cache_aware: requests the busiest node may run over the idlest before load "
                "wins over cache (with --balance-rel-threshold)"})
    balance_rel_threshold: float = field(default=1.5, metadata={
        "help": "cache_aware: ...and times the idlest node's load"})
    registry_key_prefix: str = field(default=DEFAULT_PREFIX, metadata={
        "help": "prefix of the node registrations' Redis keys (the nodes' "
                "--registry-key-prefix)"})
    page_index_key_prefix: str = field(default=DEFAULT_KEY_PREFIX, metadata={
        "help": "prefix of the page index's Redis keys (the nodes' --hicache-redis-key-prefix)"})
    page_index_timeout: float = field(default=DEFAULT_TIMEOUT_S, metadata={
        "help": "seconds a page index lookup may take on a request's path; past it the index "
                "answers nothing held for that request (the router's own estimate stands)"})
    node_api_key: str | None = field(default=None, repr=False, metadata={
        "help": "the API key the router presents to nodes that require one (default: "
                f"${NODE_API_KEY_ENV}, which keeps it off the command line)"})
    node_retry_backoff: float = field(default=0.5, metadata={
        "help": "seconds before a failed node is tried again; doubled per failure up to "
                "--node-retry-backoff-max"})
    node_retry_backoff_max: float = field(default=10.0, metadata={
        "help": "the longest wait before a failed node is tried again, in seconds"})
    discovery_interval: float = field(default=1.0, metadata={
        "help": "seconds between reads of the node registry and probes of nodes that failed"})

    def __post_init__(self) -> None:
        super().__post_init__()
        urls = self.node_urls if not isinstance(self.node_urls, str) else (self.node_urls,)
        resolve = object.__setattr__
        resolve(self, "node_urls", tuple(
            url.strip() for item in urls for url in item.split(",") if url.strip()))
        if not self.node_urls and not self.redis_url:
            raise ValueError("the router needs nodes: give --node-urls HOST:PORT ... and/or "
                             "--redis-url redis://... (where nodes register)")
        if self.redis_url:
            check_redis_url("--redis-url", self.redis_url)
        if self.policy not in POLICIES:
            raise ValueError(f"--policy {self.policy!r}: choose one of "
                             f"{', '.join(POLICIES.names())}")
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ValueError("--cache-threshold must be in [0, 1]")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1.0:
            raise ValueError("--balance-abs-threshold must be >= 0 and "
                             "--balance-rel-threshold >= 1")
        if not 0 < self.node_retry_backoff <= self.node_retry_backoff_max:
            raise ValueError("--node-retry-backoff must be in (0, --node-retry-backoff-max]")
        if not self.discovery_interval > 0:
            raise ValueError("--discovery-interval must be > 0")
        if not self.page_index_timeout > 0:
            raise ValueError("--page-index-timeout must be > 0")
        self.check_node_tls(self.node_urls)

    @property
    def choice_rule(self) -> ChoiceRule:
        return ChoiceRule(self.cache_threshold, self.balance_abs_threshold,
                          self.balance_rel_threshold)

    @property
    def node_targets(self) -> tuple[NodeTarget, ...]:
        """The static nodes, as the router dials them."""
        return tuple(node_target(url, self.node_tls_on) for url in self.node_urls)

    @property
    def node_key(self) -> str | None:
        """The key for nodes: the flag's, else $RADIXMESH_NODE_API_KEY's, read when asked."""
        return self.node_api_key or os.environ.get(NODE_API_KEY_ENV) or None
