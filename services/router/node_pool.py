"""The nodes the router may send requests to, and how it learns of them.

Two sources: `--node-urls` (static: each is its own id, its address) and the Redis registry
(`shared/node_registry.py`: whoever beats). A node is usable once a probe (its model info)
answered; a node that fails (a probe or a request) is unusable until a probe answers again,
tried with exponential backoff. A registered node that stops beating leaves the pool; one
that comes back in a new epoch (a restart: its cache is empty) is a fresh node.

Invariants: node ids are unique; only `usable` nodes are offered to the policy; a node's
`in_flight` counts the router's requests it is serving now; `busy` is never below it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from radixmesh.services.router.node_link import NodeLink, NodeLinks
from radixmesh.services.router.node_tls import NodeTarget
from radixmesh.shared.errors import RadixMeshError
from radixmesh.shared.mesh_info import ModelInfo
from radixmesh.shared.node_registry import NodeDirectory, NodeEntry, NodeLoad
from radixmesh.shared.redis_connect import REDIS_ERRORS

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Node:
    node_id: str
    link: NodeLink
    static: bool              # from --node-urls: never leaves the pool, retried forever
    epoch: str = ""
    usable: bool = False
    info: ModelInfo | None = None
    in_flight: int = 0
    failures: int = 0         # in a row; sets the backoff
    retry_at: float = 0.0     # monotonic time of the next probe while unusable
    last_error: str = ""      # why it last failed, while unusable (for clients and reports)
    load: NodeLoad = field(default_factory=NodeLoad)  # as last registered
    load_ms: int = 0          # wall-clock ms of that registration's beat; 0: none read yet
    sent_at: list[int] = field(default_factory=list)  # wall-clock ms of each request in flight

    @property
    def address(self) -> str:
        return self.link.address

    def sent(self) -> int:
        """The router sends the node a request now; give what this returns to `done`."""
        self.in_flight += 1
        self.sent_at.append(at := _now_ms())
        return at

    def done(self, at: int) -> None:
        """The request sent at `at` has ended (finished, failed or aborted)."""
        self.in_flight -= 1
        self.sent_at.remove(at)

    def registered(self, load: NodeLoad, updated_ms: int) -> None:
        """A beat's load: the node's own count, holding what was sent to it before the beat."""
        self.load, self.load_ms = load, updated_ms

    @property
    def busy(self) -> int:
        """Requests the node holds, as far as the router knows: its last beat's running and
        queued (every client's, other routers' too) plus this router's requests in flight
        there that were sent after that beat; never fewer than this router's own in flight
        (a beat is up to a TTL old: requests may have finished since). Beat and sends are
        wall-clock times of two hosts: a skew of a few ms only moves a send across the beat."""
        if not self.load_ms:
            return self.in_flight
        since = sum(1 for at in self.sent_at if at > self.load_ms)
        return max(self.in_flight, self.load.running + self.load.queued + since)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _named(node: Node) -> str:
    """How logs name a node: its id, and its address where that differs."""
    return (f"node {node.node_id}" if node.node_id == node.address
            else f"node {node.node_id} ({node.address})")


class NodePool:
    """`on_change(node, usable)` hears every node that becomes usable or stops being so (and
    `forget(node_id)` every node whose cache is gone: restarted, or left; `on_failure(node_id)`
    every failure found, each failed probe included)."""

    def __init__(self, static: tuple[NodeTarget, ...], directory: NodeDirectory | None,
                 links: NodeLinks, backoff: float, backoff_max: float,
                 on_change: Callable[[Node, bool], None],
                 forget: Callable[[str], None],
                 on_failure: Callable[[str], None] = lambda node_id: None) -> None:
        self.nodes: dict[str, Node] = {
            target.address: Node(target.address, links.open(target.address, target.tls),
                                 static=True)
            for target in static}
        self._directory = directory
        self._links = links
        self._backoff, self._backoff_max = backoff, backoff_max
        self._on_change = on_change
        self._forget = forget
        self._on_failure = on_failure
        self._registry_down = False

    def usable(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.usable]

    def why_unusable(self) -> str:
        """Each unusable node's last failure, for a client told no node is usable."""
        return "; ".join(node.last_error for node in self.nodes.values()
                         if not node.usable and node.last_error) or "none answered yet"

    async def refresh(self) -> None:
        """One round: read the registry, then probe every unusable node whose time came."""
        if self._directory is not None:
            await self._read_registry()
        now = time.monotonic()
        due = [node for node in self.nodes.values() if not node.usable and node.retry_at <= now]
        await asyncio.gather(*(self._probe(node) for node in due))

    def failed(self, node: Node, error: BaseException) -> None:
        """A request found `node` failing: out of the choice until a probe answers."""
        if not node.usable:
            return
        self._on_failure(node.node_id)
        logger.warning("%s failed: %s; retrying it with backoff", _named(node), error)
        node.usable, node.last_error = False, str(error)
        self._back_off(node)
        self._forget(node.node_id)  # it may come back restarted, with an empty cache
        self._on_change(node, False)

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.link.close()
        if self._directory is not None:
            await self._directory.close()

    async def _probe(self, node: Node) -> None:
        try:
            node.info = await node.link.model_info()
        except RadixMeshError as error:
            self._on_failure(node.node_id)
            if node.failures == 0:  # once per outage: probes repeat with backoff
                logger.warning("%s unusable (probed again with backoff): %s", _named(node),
                               error)
            node.last_error = str(error)
            self._back_off(node)
            return
        if node.usable:
            return  # a registry update may have raced the probe
        node.usable, node.failures, node.last_error = True, 0, ""
        logger.info("node %s (%s) usable", node.node_id, node.address)
        self._on_change(node, True)

    def _back_off(self, node: Node) -> None:
        delay = min(self._backoff * 2 ** node.failures, self._backoff_max)
        node.failures += 1
        node.retry_at = time.monotonic() + delay

    async def _read_registry(self) -> None:
        assert self._directory is not None
        try:
            entries = await self._directory.nodes()
        except REDIS_ERRORS as error:
            if not self._registry_down:
                logger.warning("node registry unreadable (%s); keeping the nodes known",
                               error or type(error).__name__)
            self._registry_down = True
            return
        self._registry_down = False
        seen = {entry.node_id: entry for entry in entries}
        for node_id in [n for n, node in self.nodes.items() if not node.static]:
            if node_id not in seen:
                await self._drop(self.nodes[node_id], "stopped beating")
        for entry in entries:
            await self._update(entry)

    async def _update(self, entry: NodeEntry) -> None:
        node = self.nodes.get(entry.node_id)
        if node is not None and node.static:
            node.registered(entry.load, entry.updated_ms)  # a static node that registers too
            return
        if node is not None and (node.epoch != entry.epoch or node.address != entry.address):
            await self._drop(node, f"restarted (epoch {entry.epoch[:8]})")
            node = None
        if node is None:
            node = Node(entry.node_id, self._links.open(entry.address), static=False,
                        epoch=entry.epoch)
            self.nodes[entry.node_id] = node
            logger.info("node %s registered at %s", entry.node_id, entry.address)
        node.registered(entry.load, entry.updated_ms)

    async def _drop(self, node: Node, why: str) -> None:
        logger.info("node %s (%s) left the pool: %s", node.node_id, node.address, why)
        del self.nodes[node.node_id]
        self._forget(node.node_id)
        if node.usable:
            node.usable = False
            self._on_change(node, False)
        # Requests still streaming from it keep their channel until they end.
        asyncio.get_running_loop().call_later(30.0, lambda: asyncio.ensure_future(
            node.link.close()))
