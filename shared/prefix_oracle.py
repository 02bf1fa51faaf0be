"""Who holds how much of a prompt: the question a cache-aware router asks before it picks a
replica (a DP replica of one mesh here; a node behind the router later).

`PrefixOracle` is the interface: `matched` answers, per replica, how many leading tokens of a
prompt that replica is believed to hold. `SentPrefixes` answers from memory of what was sent
where, as SGLang's router does: an approximate radix tree, right as long as replicas keep what
they were sent, wrong (harmlessly: a miss costs a recompute, never a wrong token) once they
evict. An oracle that asks the replicas themselves (the Redis page index) is another
implementation of the same interface.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field


class PrefixOracle(ABC):
    """Invariants: `matched` never reports more tokens than the prompt has, nor a replica it was
    not told about; `record` is called with the replica each prompt was sent to."""

    @abstractmethod
    def matched(self, token_ids: Sequence[int]) -> dict[int, int]:
        """Replica -> leading tokens of `token_ids` it is believed to hold (0s included)."""

    @abstractmethod
    def record(self, replica: int, token_ids: Sequence[int]) -> None:
        """`token_ids` were sent to `replica`."""

    @abstractmethod
    def held_tokens(self, replica: int) -> int:
        """Tokens `replica` is believed to hold in all (its cache's fill, as far as known)."""


@dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...] = ()  # the edge from the parent
    children: dict[int, _Node] = field(default_factory=dict)  # by first token
    parent: _Node | None = None
    last_sent: dict[int, int] = field(default_factory=dict)  # replica -> clock of last use


class SentPrefixes(PrefixOracle):
    """A radix tree of the prompts sent to each replica, at most `max_tokens_per_replica`
    tokens remembered per replica (the least recently sent are forgotten first)."""

    def __init__(self, num_replicas: int, max_tokens_per_replica: int = 1 << 20) -> None:
        self.num_replicas = num_replicas
        self.max_tokens = max_tokens_per_replica
        self._root = _Node()
        self._held = [0] * num_replicas  # tokens remembered per replica
        self._clock = itertools.count(1)

    def matched(self, token_ids: Sequence[int]) -> dict[int, int]:
        found = dict.fromkeys(range(self.num_replicas), 0)
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

    def record(self, replica: int, token_ids: Sequence[int]) -> None:
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

    def held_tokens(self, replica: int) -> int:
        return self._held[replica]

    def _forget_oldest(self, replica: int) -> None:
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
