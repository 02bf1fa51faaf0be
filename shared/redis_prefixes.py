"""The exact prefix oracle: which node holds how many leading pages of a prompt, as the nodes
themselves advertise them in the Redis page index (`shared/page_index_layout.py`).

The prompt's page keys are computed with the nodes' own key namespace (learned from a node,
never guessed: a wrong namespace would only ever miss), and every node is asked in one
pipeline (one MGET each: its heartbeat, then the chain's entries), under one deadline. A node
holds what it advertises in the epoch its heartbeat names; a dead or restarted node's entries
count for nothing. Like every oracle it never raises: Redis away, it answers nothing held.

What a node advertises is what its page index holds (the pages its hicache knows, design §4),
so a node that keeps a prefix in device memory alone reads as holding none of it here: the
router asks this oracle through `prefix_oracle.BestOf`, which takes per node the max of this
answer and the approximate tree's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import redis.asyncio as redis_asyncio

from radixmesh.shared.page_index_layout import RedisLayout, leading_run
from radixmesh.shared.page_keys import KeyNamespace, page_keys
from radixmesh.shared.prefix_oracle import PrefixOracle, Replica

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 0.05  # a lookup on the request path: a slow Redis must not add latency


class RedisPrefixes(PrefixOracle):
    """`nodes()`: the node ids to ask (the router's usable nodes); `namespace`: the nodes' key
    namespace, None until learned (every lookup a miss until then)."""

    def __init__(self, client: redis_asyncio.Redis, layout: RedisLayout,
                 nodes: Callable[[], Sequence[str]], namespace: KeyNamespace | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._client = client
        self._layout = layout
        self._nodes = nodes
        self.namespace = namespace
        self._timeout_s = timeout_s
        self.errors = 0  # lookups Redis did not answer in time

    def matched(self, token_ids: Sequence[int]) -> dict[Replica, int]:
        """Nothing is known without asking: use `lookup`."""
        return dict.fromkeys(self._nodes(), 0)

    async def lookup(self, token_ids: Sequence[int],
                     cache_salt: str | None = None) -> dict[Replica, int]:
        nodes = list(self._nodes())
        found: dict[Replica, int] = dict.fromkeys(nodes, 0)
        namespace = self.namespace
        if namespace is None or not nodes:
            return found
        keys = page_keys(namespace.with_salt(cache_salt).root(), token_ids, namespace.page_size)
        if not keys:
            return found
        try:
            async with asyncio.timeout(self._timeout_s):
                pipe = self._client.pipeline(transaction=False)
                for node in nodes:
                    pipe.execute_command(*self._layout.lookup_command(node, keys))
                replies = await pipe.execute()
        except Exception as error:  # any failure is a miss: the invariant
            self.errors += 1
            logger.debug("page index lookup failed: %r", error)
            return found
        for node, reply in zip(nodes, replies, strict=True):
            found[node] = leading_run(reply).num_pages * namespace.page_size
        return found

    def learn(self, page_size: int, namespace: KeyNamespace | None) -> None:
        """The first namespace a node tells is kept (every node serves one model); a node
        that names another is logged, and its keys would only miss."""
        if namespace is None:
            return
        if self.namespace is None:
            self.namespace = namespace
            logger.info("prefix oracle: the Redis page index (pages of %s, %d tokens each)",
                        namespace.model_id, namespace.page_size)
        elif namespace != self.namespace:
            logger.warning("a node names its pages differently (%s) from the first (%s): its "
                           "pages will not be found in the index", namespace, self.namespace)

    def record(self, replica: Replica, token_ids: Sequence[int]) -> None:
        """The nodes advertise what they hold themselves: nothing to remember."""

    def held_tokens(self, replica: Replica) -> int:
        return 0
