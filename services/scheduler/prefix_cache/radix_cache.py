"""RadixAttention's prefix cache: a compressed radix tree over whole KV pages, metadata only."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.prefix_cache.base import PrefixCache, PrefixMatch
from radixmesh.services.scheduler.prefix_cache.namespace_roots import NamespaceRoots
from radixmesh.services.scheduler.prefix_cache.radix_node import RadixNode


class RadixCache(PrefixCache):
    """A radix tree whose edges hold whole pages: token ids -> the page ids holding their KV.

    Children are looked up by their first page's tokens, so a walk never lands inside a page;
    a match that ends inside an edge splits it at that page boundary. Handles are nodes. A split
    keeps the deeper half in the original node object, so a live handle always covers exactly
    the tokens it matched; once any of its pages is evicted it is stale, and `lock` refuses it.

    Each cache salt has a tree of its own (`NamespaceRoots`): what one salt inserted is never
    matched under another salt or none, so requests of different salts share no page.

    Bookkeeping kept so that no call costs more than its own tokens (plus heap operations):
    - A lock adds one to `lock_ref` on the handle and on every ancestor up to the root, so the
      pages evictable now are exactly those of non-root nodes with `lock_ref == 0` (evicting
      leaves one at a time eventually reaches each of them). That sum is a counter, and the
      roots' `lock_ref`s add up to the number of locks outstanding.
    - Access times come from a call counter, not the wall clock, so eviction is deterministic.
    - Every unlocked non-root leaf has an entry in `_heap`, keyed by an access time no newer
      than its own. Uses do not touch the heap: `evict` refreshes a stale entry when it pops
      it, which still yields the true least-recently-used leaf since stale keys only err low.
      Each node has at most one entry (`in_heap`), so the heap never outgrows the tree.
    """

    def __init__(self, page_size: int, allocator: PageAllocator) -> None:
        super().__init__(page_size, allocator)
        self._roots = NamespaceRoots(self._new_root)
        self._clock = 0
        self._heap: list[tuple[int, int, RadixNode]] = []
        # Tie-breaker for equal access times, so heap entries never compare nodes.
        self._heap_seq = itertools.count()
        self._num_cached_pages = 0
        self._num_evictable_pages = 0

    # -- lookups and inserts --------------------------------------------------------------

    def _new_root(self, salt: str | None) -> RadixNode:
        return RadixNode(key=(), page_ids=[], parent=None, salt=salt)

    def match_prefix(self, token_ids: Sequence[int], salt: str | None = None) -> PrefixMatch:
        aligned = len(token_ids) - len(token_ids) % self.page_size
        node, num_tokens, page_ids = self._walk(tuple(token_ids[:aligned]),
                                                self._roots.for_salt(salt))
        return PrefixMatch(page_ids=tuple(page_ids), num_tokens=num_tokens, handle=node)

    def insert(self, token_ids: Sequence[int], page_ids: Sequence[int],
               salt: str | None = None) -> int:
        if len(token_ids) != len(page_ids) * self.page_size:
            raise ValueError(
                f"{len(token_ids)} tokens do not fill {len(page_ids)} pages of {self.page_size}"
            )
        key = tuple(token_ids)
        root = self._roots.for_insert(salt)
        node, num_cached, _ = self._walk(key, root)
        if num_cached < len(key):
            first_new_page = num_cached // self.page_size
            self._attach_leaf(node, key[num_cached:], list(page_ids[first_new_page:]))
        self._roots.prune(root)  # an empty insert leaves a new salt's root empty
        return num_cached

    def _walk(self, key: tuple[int, ...], root: RadixNode) -> tuple[RadixNode, int, list[int]]:
        """Follows the longest cached prefix of the page-aligned `key` below `root`, marking it
        used.

        Splits the last edge if the match ends inside it, so the returned node covers exactly
        the matched tokens. Returns that node, the matched token count and the matched pages.
        """
        page_size = self.page_size
        self._clock += 1
        node = root
        node.last_access = self._clock
        matched = 0
        page_ids: list[int] = []
        while matched < len(key):
            child = node.children.get(key[matched : matched + page_size])
            if child is None:
                break
            length = _common_pages_length(child.key, key, matched, page_size)
            if length < len(child.key):
                child = self._split(child, length)
            child.last_access = self._clock
            page_ids.extend(child.page_ids)
            node = child
            matched += length
        return node, matched, page_ids

    def _split(self, node: RadixNode, num_tokens: int) -> RadixNode:
        """Cuts `node`'s edge after `num_tokens`; returns the new node holding the first part."""
        assert node.parent is not None, "the root has no edge to split"
        page_size = self.page_size
        num_pages = num_tokens // page_size
        head = RadixNode(
            key=node.key[:num_tokens],
            page_ids=node.page_ids[:num_pages],
            parent=node.parent,
            lock_ref=node.lock_ref,  # every lock that covered node's pages covers head's
            last_access=node.last_access,
        )
        node.parent.children[head.key[:page_size]] = head
        node.key = node.key[num_tokens:]
        node.page_ids = node.page_ids[num_pages:]
        node.parent = head
        head.children[node.key[:page_size]] = node
        return head

    def _attach_leaf(self, parent: RadixNode, key: tuple[int, ...],
                     page_ids: list[int]) -> RadixNode:
        leaf = RadixNode(key=key, page_ids=page_ids, parent=parent, last_access=self._clock)
        parent.children[key[: self.page_size]] = leaf
        self._num_cached_pages += len(page_ids)
        self._num_evictable_pages += len(page_ids)
        self._push_candidate(leaf)
        return leaf

    # -- locks ----------------------------------------------------------------------------

    def lock(self, handle: object) -> None:
        node: RadixNode | None = self._live_node(handle)
        while node is not None:
            if node.lock_ref == 0:
                self._num_evictable_pages -= len(node.page_ids)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, handle: object) -> None:
        target = self._live_node(handle)
        if target.lock_ref == 0:
            raise ValueError("unlock without a matching lock")
        node: RadixNode | None = target
        while node is not None:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._num_evictable_pages += len(node.page_ids)
            node = node.parent
        # Only the handle itself can have become an unlocked leaf: its ancestors all have it
        # below them.
        if target.is_root:
            self._roots.prune(target)
        elif target.lock_ref == 0 and self._is_candidate(target):
            self._push_candidate(target)

    def _live_node(self, handle: object) -> RadixNode:
        if not isinstance(handle, RadixNode):
            raise TypeError(f"not a handle of this cache: {handle!r}")
        if handle.evicted:
            raise ValueError(
                "the handle's entry was evicted (wholly or in part): lock it right after "
                "match_prefix, before anything can evict"
            )
        return self._roots.registered(handle) if handle.is_root else handle

    # -- eviction -------------------------------------------------------------------------

    def evict(self, num_pages: int) -> int:
        freed: list[int] = []
        while len(freed) < num_pages and self._heap:
            last_access, _, node = heapq.heappop(self._heap)
            node.in_heap = False
            if node.evicted or not self._is_candidate(node) or node.lock_ref > 0:
                continue  # whatever makes it a candidate again pushes it again
            if last_access != node.last_access:
                self._push_candidate(node)  # used since it was pushed: requeue at its real time
                continue
            freed.extend(self._evict_from_leaf(node, num_pages - len(freed)))
        self._num_cached_pages -= len(freed)
        self._num_evictable_pages -= len(freed)
        self.allocator.free(freed)
        return len(freed)

    def _evict_from_leaf(self, leaf: RadixNode, budget: int) -> list[int]:
        """Frees up to `budget` pages from the end of `leaf`'s edge; returns their ids."""
        if budget < len(leaf.page_ids):
            # Free only the tail, so no more than asked is evicted. Splitting (rather than
            # shortening `leaf` in place) moves the kept pages to a new node and retires
            # `leaf`, so a stale handle naming it fails loudly instead of covering freed pages.
            self._split(leaf, (len(leaf.page_ids) - budget) * self.page_size)
        parent = leaf.parent
        assert parent is not None, "the root is never an eviction candidate"
        del parent.children[leaf.key[: self.page_size]]
        leaf.parent = None
        leaf.evicted = True
        if parent.is_root:
            self._roots.prune(parent)
        elif self._is_candidate(parent) and parent.lock_ref == 0:
            self._push_candidate(parent)
        return leaf.page_ids

    def _is_candidate(self, node: RadixNode) -> bool:
        """Whether `node`, once unlocked, is next in line for eviction: a leaf here; a tiered
        cache evicts device copies from the bottom of the device-resident part instead."""
        return node.is_leaf

    def _push_candidate(self, node: RadixNode) -> None:
        if not node.in_heap:
            node.in_heap = True
            heapq.heappush(self._heap, (node.last_access, next(self._heap_seq), node))

    # -- sizes, reset, integrity ----------------------------------------------------------

    @property
    def num_cached_pages(self) -> int:
        return self._num_cached_pages

    @property
    def num_evictable_pages(self) -> int:
        return self._num_evictable_pages

    def reset(self) -> None:
        if self._roots.num_locks:
            raise RuntimeError(f"reset while {self._roots.num_locks} locks are held")
        freed: list[int] = []
        stack = [child for root in self._roots for child in root.children.values()]
        while stack:
            node = stack.pop()
            freed.extend(node.page_ids)
            stack.extend(node.children.values())
            node.parent = None
            node.evicted = True
        for root in self._roots:
            root.children.clear()
        self._roots.clear()
        self._heap.clear()
        self._num_cached_pages = 0
        self._num_evictable_pages = 0
        self.allocator.free(freed)

    def _check_node(self, node: RadixNode) -> None:
        """The invariants of one node below the root that are not about counters."""
        expect(len(node.page_ids) > 0, "empty edge below the root")
        expect(len(node.key) == len(node.page_ids) * self.page_size, "key/page mismatch")

    def check_consistency(self) -> None:
        """Recomputes every counter and invariant from the tree (O(tree): debug and idle use).

        Raises AssertionError (explicitly, so `python -O` keeps the check) on any mismatch.
        """
        self._roots.check(expect)
        for root in self._roots:
            expect(not root.key and not root.page_ids and root.parent is None, "root has an edge")
        cached = evictable = 0
        seen_pages: set[int] = set()
        stack = list(self._roots)
        while stack:
            node = stack.pop()
            expect(
                node.lock_ref >= sum(c.lock_ref for c in node.children.values()),
                f"lock_ref below its children's at {node.key[:8]}",
            )
            for first_page, child in node.children.items():
                expect(child.parent is node and not child.evicted, "broken parent link")
                expect(child.key[: self.page_size] == first_page, "child filed under wrong key")
                expect(child.last_access <= node.last_access, "child used after its parent")
                stack.append(child)
            if node.is_root:
                continue
            self._check_node(node)
            expect(seen_pages.isdisjoint(node.page_ids), "a page is cached twice")
            seen_pages.update(node.page_ids)
            cached += len(node.page_ids)
            if node.lock_ref == 0:
                evictable += len(node.page_ids)
                expect(not self._is_candidate(node) or node.in_heap,
                        "unlocked leaf missing from the heap")
        expect(cached == self._num_cached_pages, f"cached {cached} != {self._num_cached_pages}")
        expect(
            evictable == self._num_evictable_pages,
            f"evictable {evictable} != {self._num_evictable_pages}",
        )
        in_heap = [node for _, _, node in self._heap]
        expect(all(node.in_heap for node in in_heap), "heap entry for a node not marked in_heap")
        expect(len({id(node) for node in in_heap}) == len(in_heap), "node in the heap twice")


def _common_pages_length(
    edge: tuple[int, ...], key: tuple[int, ...], start: int, page_size: int
) -> int:
    """Tokens of `edge` that `key[start:]` matches, rounded down to whole pages."""
    limit = min(len(edge), len(key) - start)
    if key[start : start + limit] == edge[:limit]:
        return limit  # the common case; both lengths are whole pages
    mismatch = next(i for i in range(limit) if edge[i] != key[start + i])
    return mismatch - mismatch % page_size


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(f"radix cache inconsistent: {message}")
