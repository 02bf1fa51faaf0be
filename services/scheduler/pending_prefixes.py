"""Prompt prefixes being computed right now, so that requests sharing them wait their turn.

Requests admitted together all miss the prefix cache, even when they share a long system
prompt: none of them is in the cache yet. Deferring the others for the step or two until the
first one's prefill has been shared turns those misses into hits (SGLang's in-batch prefix
caching). A request is deferred only while its first PREFIX_TOKENS tokens are pending and the
cache holds less of it than that; it runs as soon as the prefix is shared.
"""

from __future__ import annotations

from collections import Counter

from radixmesh.services.scheduler.request import SchedReq

PREFIX_TOKENS = 32


class PendingPrefixes:
    def __init__(self, prefix_tokens: int = PREFIX_TOKENS) -> None:
        self.prefix_tokens = prefix_tokens
        self._counts: Counter[_Prefix] = Counter()
        self._keys: dict[str, _Prefix] = {}

    def add(self, req: SchedReq) -> None:
        """Notes that `req`'s prompt is being computed (no-op for short prompts)."""
        if req.rid in self._keys or req.seq_len <= self.prefix_tokens:
            return
        key = _prefix(req, self.prefix_tokens)
        self._keys[req.rid] = key
        self._counts[key] += 1

    def discard(self, rid: str) -> None:
        """`rid`'s prefix is now shared (or the request is gone)."""
        key = self._keys.pop(rid, None)
        if key is None:
            return
        self._counts[key] -= 1
        if not self._counts[key]:
            del self._counts[key]

    def should_defer(self, req: SchedReq, num_cached_tokens: int) -> bool:
        if num_cached_tokens >= self.prefix_tokens or req.seq_len <= self.prefix_tokens:
            return False
        return _prefix(req, self.prefix_tokens) in self._counts


_Prefix = tuple[str | None, tuple[int, ...]]


def _prefix(req: SchedReq, num_tokens: int) -> _Prefix:
    """A prompt's first tokens in its cache namespace: a request waits only for one that will
    share its pages, of the same salt."""
    return req.cache_salt, req.all_ids[:num_tokens]
