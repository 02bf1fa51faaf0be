"""Who holds how much of a prompt: the question a cache-aware router asks before it picks a
replica (a DP replica of one mesh, or a node behind the router).

`PrefixOracle` is the interface: `matched` answers, per replica, how many leading tokens of a
prompt that replica is believed to hold. `SentPrefixes` answers from memory of what was sent
where, as SGLang's router does: an approximate radix tree, right as long as replicas keep what
they were sent, wrong (harmlessly: a miss costs a recompute, never a wrong token) once they
evict. An oracle that asks the replicas themselves (the Redis page index,
`shared/redis_prefixes.py`) must wait for an answer: it overrides `lookup`, the asynchronous
form every caller that can wait uses.

A replica is named by any hashable value: an index for DP replicas, a node id for nodes.

`BestOf` is the router's oracle: per node, the larger of the two answers (the index knows
what other traffic put on a node and what survived eviction; the tree knows pages the index
never sees, those a node keeps in device memory alone).
"""

from __future__ import annotations

import itertools
import zlib
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from radixmesh.shared.page_keys import KeyNamespace

Replica = Hashable


class PrefixOracle(ABC):
    """Invariants: `matched` never reports more tokens than the prompt has, nor a replica it was
    not told about; `record` is called with the replica each prompt was sent to."""

    @abstractmethod
    def matched(self, token_ids: Sequence[int]) -> dict[Replica, int]:
        """Replica -> leading tokens of `token_ids` it is believed to hold (0s included)."""

    async def lookup(self, token_ids: Sequence[int],
                     cache_salt: str | None = None) -> dict[Replica, int]:
        """`matched`, for callers that can wait; an oracle that asks elsewhere overrides it
        (and must never raise: an oracle it cannot ask answers nothing held). `cache_salt`:
        the request's, for an oracle whose keys depend on it."""
        return self.matched(token_ids)

    @abstractmethod
    def record(self, replica: Replica, token_ids: Sequence[int]) -> None:
        """`token_ids` were sent to `replica`."""

    @abstractmethod
    def held_tokens(self, replica: Replica) -> int:
        """Tokens `replica` is believed to hold in all (its cache's fill, as far as known)."""

    def forget(self, replica: Replica) -> None:
        """`replica` lost what it held (it restarted, or left): believe it holds nothing.
        An oracle that asks the replicas themselves has nothing to forget."""
        return None

    def learn(self, page_size: int, namespace: KeyNamespace | None) -> None:
        """The replicas' page size and page-key namespace (None: they keep no KV pages), as a
        replica told them: for an oracle that counts whole pages or computes page keys."""
        return None


@dataclass(frozen=True, slots=True)
class PrefixLookup:
    held: dict[Replica, int]     # the best estimate per replica (what `lookup` answers)
    indexed: dict[Replica, int]  # what the exact index alone says: pages others may fetch

    @property
    def fetchable(self) -> int:
        """The longest leading run any replica advertises: what a remote fetch could bring."""
        return max(self.indexed.values(), default=0)


class BestOf(PrefixOracle):
    """The router's estimate: per replica, the max of the exact oracle's matched tokens (the
    Redis page index: pages a node's hicache advertises, its L2/L3 pages; blind to a prefix a
    node holds on its device alone) and the approximate one's (what was sent where; blind to
    other routers' traffic and to evictions). Either may undercount and an overcount costs
    only a recompute, so the larger is the better guess. The approximate tree's matches are
    floored to whole pages (a node reuses whole pages only, so a one-token match, the BOS
    every prompt shares, is no match). `record`, `held_tokens` and `forget` are the tree's.

    `exact` None (no Redis): the tree alone; its `lookup` must never raise (the interface)."""

    def __init__(self, approximate: SentPrefixes, exact: PrefixOracle | None = None) -> None:
        self.approximate = approximate
        self.exact = exact
        self.page_size = 1

    def matched(self, token_ids: Sequence[int]) -> dict[Replica, int]:
        return self._floored(self.approximate.matched(token_ids))

    async def lookup(self, token_ids: Sequence[int],
                     cache_salt: str | None = None) -> dict[Replica, int]:
        return (await self.lookup_both(token_ids, cache_salt)).held

    async def lookup_both(self, token_ids: Sequence[int],
                          cache_salt: str | None = None) -> PrefixLookup:
        key = _salted(token_ids, cache_salt)
        extra = len(key) - len(token_ids)  # the salt's token: never held
        held = self._floored({replica: max(tokens - extra, 0) for replica, tokens
                              in self.approximate.matched(key).items()})
        indexed: dict[Replica, int] = {}
        if self.exact is not None:
            indexed = await self.exact.lookup(token_ids, cache_salt)
        for replica, tokens in indexed.items():
            held[replica] = max(held.get(replica, 0), tokens)
        return PrefixLookup(held, indexed)

    def record(self, replica: Replica, token_ids: Sequence[int],
               cache_salt: str | None = None) -> None:
        """`cache_salt`: the request's; a salted prompt is remembered under its salt, so it
        matches only prompts of the same salt (as the nodes' caches match)."""
        self.approximate.record(replica, _salted(token_ids, cache_salt))

    def held_tokens(self, replica: Replica) -> int:
        return self.approximate.held_tokens(replica)

    def forget(self, replica: Replica) -> None:
        self.approximate.forget(replica)

    def learn(self, page_size: int, namespace: KeyNamespace | None) -> None:
        self.page_size = max(page_size, 1)
        if self.exact is not None:
            self.exact.learn(page_size, namespace)

    def _floored(self, matched: dict[Replica, int]) -> dict[Replica, int]:
        size = self.page_size
        return {replica: tokens // size * size for replica, tokens in matched.items()}


@dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...] = ()  # the edge from the parent
    children: dict[int, _Node] = field(default_factory=dict)  # by first token
    parent: _Node | None = None
    last_sent: dict[Replica, int] = field(default_factory=dict)  # replica -> clock of last use


class SentPrefixes(PrefixOracle):
    """A radix tree of the prompts sent to each replica, at most `max_tokens_per_replica`
    tokens remembered per replica (the least recently sent are forgotten first).

    `replicas`: a count (replicas 0..n-1) or the names of the replicas known at start; one
    first recorded later is added then."""

    def __init__(self, replicas: int | Iterable[Replica],
                 max_tokens_per_replica: int = 1 << 20) -> None:
        known = range(replicas) if isinstance(replicas, int) else replicas
        self.max_tokens = max_tokens_per_replica
        self._root = _Node()
        self._held: dict[Replica, int] = dict.fromkeys(known, 0)  # tokens remembered
        self._clock = itertools.count(1)

    @property
    def num_replicas(self) -> int:
        return len(self._held)

    def matched(self, token_ids: Sequence[int]) -> dict[Replica, int]:
        found = dict.fromkeys(self._held, 0)
        node, depth = self._root, 0
        while depth < len(token_ids):
            child = node.children.get(token_ids[depth])
            if child is None:
                break
            common = _common_length(child.tokens, token_ids, depth)
            for replica in child.last_sent:
                found[replica] = depth + common
            if common < len(child.tokens):
                break
            node, depth = child, depth + common
        return found

    def record(self, replica: Replica, token_ids: Sequence[int]) -> None:
        self._held.setdefault(replica, 0)
        now = next(self._clock)
        node, depth = self._root, 0
        while depth < len(token_ids):
            child = node.children.get(token_ids[depth])
            if child is None:
                child = _Node(tuple(token_ids[depth:]), parent=node)
                node.children[token_ids[depth]] = child
            common = _common_length(child.tokens, token_ids, depth)
            if common < len(child.tokens):
                child = _split(child, common)
            if replica not in child.last_sent:
                self._held[replica] += len(child.tokens)
            child.last_sent[replica] = now
            node, depth = child, depth + common
        while self._held[replica] > self.max_tokens:
            self._forget_oldest(replica)

    def held_tokens(self, replica: Replica) -> int:
        return self._held.get(replica, 0)

    def forget(self, replica: Replica) -> None:
        if replica not in self._held:
            return
        self._held[replica] = 0
        order, stack = [], [self._root]
        while stack:  # parents before children
            node = stack.pop()
            order.append(node)
            stack.extend(node.children.values())
            node.last_sent.pop(replica, None)
        for node in reversed(order):  # children first: a subtree nobody holds goes whole
            if node.parent is not None and not node.last_sent and not node.children:
                del node.parent.children[node.tokens[0]]

    def _forget_oldest(self, replica: Replica) -> None:
        """Drops `replica` from its least recently sent leaf (a node none of whose children it
        holds), so what it keeps stays a set of whole prefixes."""
        oldest: _Node | None = None
        stack = list(self._root.children.values())
        while stack:
            node = stack.pop()
            if replica not in node.last_sent:
                continue
            deeper = [child for child in node.children.values() if replica in child.last_sent]
            if deeper:
                stack.extend(deeper)
            elif oldest is None or node.last_sent[replica] < oldest.last_sent[replica]:
                oldest = node
        assert oldest is not None, "held tokens counted for a replica the tree does not hold"
        del oldest.last_sent[replica]
        self._held[replica] -= len(oldest.tokens)
        while oldest.parent is not None and not oldest.last_sent and not oldest.children:
            del oldest.parent.children[oldest.tokens[0]]
            oldest = oldest.parent


def _salted(token_ids: Sequence[int], cache_salt: str | None) -> Sequence[int]:
    """The tree's key of a prompt: a salted one starts with a token no tokenizer makes (a
    negative id drawn from the salt), so salts never share a branch with each other or with
    unsalted prompts (a crc32 collision only costs a recompute, never a wrong token)."""
    if cache_salt is None:
        return token_ids
    return [-1 - zlib.crc32(cache_salt.encode("utf-8", "surrogatepass")), *token_ids]


def _common_length(edge: tuple[int, ...], token_ids: Sequence[int], start: int) -> int:
    limit = min(len(edge), len(token_ids) - start)
    length = 0
    while length < limit and edge[length] == token_ids[start + length]:
        length += 1
    return length


def _split(node: _Node, at: int) -> _Node:
    """Cuts `node`'s edge after `at` tokens; returns the new upper node (holding what `node`
    held: every replica that holds the lower part holds the upper one)."""
    assert node.parent is not None
    upper = _Node(node.tokens[:at], parent=node.parent, last_sent=dict(node.last_sent))
    node.parent.children[node.tokens[0]] = upper
    node.tokens, node.parent = node.tokens[at:], upper
    upper.children[node.tokens[0]] = node
    return upper
