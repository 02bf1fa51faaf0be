"""The radix cache over two tiers: device pages (L1) and host slots (L2), metadata only.

Each node's pages live on the device (`page_ids`), in host slots (`host_slots`), or both. The
device copy serves requests; the host copy outlives device eviction, so a later request loads
its pages back instead of recomputing them. What moves bytes is planned here and carried by
the next step plan: backups (device -> host) and loads (host -> device), which the worker runs
before that step's forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from radixmesh.services.scheduler.config import WRITE_POLICIES
from radixmesh.services.scheduler.host_slots import HostSlots
from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.prefix_cache.base import PrefixMatch
from radixmesh.services.scheduler.prefix_cache.host_tier import HostTier
from radixmesh.services.scheduler.prefix_cache.radix_cache import RadixCache, expect
from radixmesh.services.scheduler.prefix_cache.radix_node import RadixNode
from radixmesh.shared.page_keys import KeyNamespace


class HiRadixCache(RadixCache):
    """Invariants, beyond RadixCache's (`check_consistency` verifies them):
    - every node below the root holds its pages on the device, in host slots, or both;
    - device residency is connected to the root: a node with device pages has a parent with
      device pages (or is a child of the root), so the device part of any match is a prefix;
    - `num_cached_pages` and `num_evictable_pages` count device pages only; locks protect device
      pages, and only device-resident nodes are ever locked;
    - device eviction takes unlocked device leaves (device pages, no child with device pages):
      one with a valid host copy only loses its device pages; one without loses the node and
      its (host-only) subtree;
    - host eviction takes host-only tree leaves whose slots are not being stored to L3;
    - with page keys (`key_namespace` given), a salted root holds one key, its salted
      namespace's h_0, so every key below it chains from there: a salt's pages have keys no
      other salt's (or an unsalted request's) can have, in L2, L3, Redis or on a peer.
    """

    def __init__(self, page_size: int, allocator: PageAllocator, host: HostSlots,
                 write_policy: str = "write_through",
                 key_namespace: KeyNamespace | None = None) -> None:
        if write_policy not in WRITE_POLICIES:
            raise ValueError(f"unknown --hicache-write-policy {write_policy!r}")
        self.key_namespace = key_namespace
        super().__init__(page_size, allocator)
        self.write_policy = write_policy
        key_root = None if key_namespace is None else key_namespace.root()
        self.tier = HostTier(page_size, host, key_root)

    def _new_root(self, salt: str | None) -> RadixNode:
        root = super()._new_root(salt)
        if salt is not None and self.key_namespace is not None:
            root.page_keys = [self.key_namespace.with_salt(salt).root()]
        return root

    @property
    def host(self) -> HostSlots:
        return self.tier.host

    # -- matching ---------------------------------------------------------------------------

    def match_prefix(self, token_ids: Sequence[int], salt: str | None = None) -> PrefixMatch:
        aligned = len(token_ids) - len(token_ids) % self.page_size
        node, num_tokens, page_ids = self._walk(tuple(token_ids[:aligned]),
                                                self._roots.for_salt(salt))
        node, hosted = self._host_tail(node)
        num_host_tokens = sum(len(n.key) for n in hosted)
        if self.write_policy == "write_through_selective":
            self._back_up_path(node)  # a hit: worth keeping beyond the device
        return PrefixMatch(page_ids=tuple(page_ids), num_tokens=num_tokens - num_host_tokens,
                           handle=node, num_host_tokens=num_host_tokens,
                           host_handle=tuple(hosted) or None)

    def _host_tail(self, node: RadixNode) -> tuple[RadixNode, list[RadixNode]]:
        """Splits the path that ends at `node` into its device part (the deepest node with
        device pages, or the root) and the host-only nodes below it, top down."""
        hosted: list[RadixNode] = []
        while not node.is_root and not node.page_ids:
            hosted.append(node)
            node = node.parent
        hosted.reverse()
        return node, hosted

    def keys_past(self, match: PrefixMatch, token_ids: Sequence[int]) -> list[bytes]:
        """The page keys of `token_ids`, the pages right after those `match` covers: chained
        from the last matched page's key, which the tree already holds."""
        deepest = match.host_handle[-1] if match.host_handle else match.handle
        return self.tier.keys_after(deepest, token_ids)

    def _walk(self, key: tuple[int, ...], root: RadixNode) -> tuple[RadixNode, int, list[int]]:
        """RadixCache's walk, cut where host bytes are not valid yet (a backup still on its
        way): the pages it returns are the device prefix's; host-only nodes may follow."""
        node, matched, page_ids = super()._walk(key, root)
        while not node.is_root and not node.page_ids and not self.tier.is_valid(node):
            matched -= len(node.key)
            node = node.parent
        return node, matched, page_ids

    def load(self, match: PrefixMatch,
             device_pages: Sequence[int]) -> tuple[RadixNode, int, int]:
        """Gives the host-only nodes of `match` device pages, planning their loads. Returns the
        deepest of them (the handle to lock in place of `match.handle`) and how many of the
        loaded tokens a prefetch had brought from L3, and from another node."""
        nodes: tuple[RadixNode, ...] = match.host_handle or ()
        start = from_storage = from_remote = 0
        for node in nodes:
            expect(not node.evicted and not node.page_ids, "loading a node that changed")
            pages = list(device_pages[start:start + len(node.host_slots)])
            from_remote += len(node.key) if node.from_remote else 0
            from_storage += len(node.key) if node.from_storage and not node.from_remote else 0
            self.tier.plan_load(node, pages)
            self._give_device_pages(node, pages)
            start += len(pages)
        return nodes[-1], from_storage, from_remote

    # -- inserting ----------------------------------------------------------------------------

    def insert(self, token_ids: Sequence[int], page_ids: Sequence[int],
               salt: str | None = None) -> int:
        """Host-only nodes on the way adopt the caller's pages (their KV is the same), so only
        the device-cached tokens count as already cached for the caller."""
        if len(token_ids) != len(page_ids) * self.page_size:
            raise ValueError(f"{len(token_ids)} tokens do not fill {len(page_ids)} pages")
        key = tuple(token_ids)
        root = self._roots.for_insert(salt)
        node, matched, _ = RadixCache._walk(self, key, root)
        node, path = self._host_tail(node)
        device_tokens = matched - sum(len(n.key) for n in path)
        start = device_tokens // self.page_size
        for hosted in path:
            count = len(hosted.key) // self.page_size
            self._give_device_pages(hosted, list(page_ids[start:start + count]))
            start += count
            node = hosted
        if matched < len(key):
            leaf = self._attach_leaf(node, key[matched:],
                                     list(page_ids[matched // self.page_size:]))
            if self.write_policy == "write_through":
                self._back_up(leaf)
        self._roots.prune(root)
        return device_tokens

    def insert_prefetched(self, token_ids: Sequence[int], slots: Sequence[int],
                          keys: Sequence[bytes], remote: bool = False,
                          salt: str | None = None) -> list[int]:
        """Adds the pages a prefetch wrote as host-only nodes: `slots[i]` holds the page keyed
        `keys[i]`, the last `len(slots)` pages of `token_ids` (`remote`: fetched from another
        node, not read from L3), under `salt`'s root. Returns the slots the tree did not take
        (their pages were cached meanwhile, or the prefix before them is gone), for the caller
        to free."""
        key = tuple(token_ids)
        root = self._roots.for_insert(salt)
        node, matched, _ = RadixCache._walk(self, key, root)
        first = len(key) // self.page_size - len(slots)
        skip = matched // self.page_size - first
        connected = node.is_root or bool(node.host_slots)
        if skip < 0 or skip == len(slots) or not connected:
            self._roots.prune(root)
            return list(slots)
        leaf = self._attach_leaf(node, key[matched:], [])
        self.tier.adopt_prefetched(leaf, list(slots[skip:]), list(keys[skip:]), remote)
        return list(slots[:skip])

    # -- backups ------------------------------------------------------------------------------

    def _back_up_path(self, node: RadixNode, evict_host: bool = True) -> None:
        """Backs up `node` and its unhosted ancestors, root side first (host residency stays
        connected to the root); stops where host memory cannot take the next node."""
        path = []
        while not node.is_root and not node.host_slots:
            path.append(node)
            node = node.parent
        for hosted in reversed(path):
            if not self._back_up(hosted, evict_host):
                return

    def _back_up(self, node: RadixNode, evict_host: bool = True) -> bool:
        """Plans a backup of `node`'s device pages into fresh host slots, making room by host
        eviction; False (nothing planned) when host memory cannot take it."""
        if not node.parent.is_root and not node.parent.host_slots:
            return False  # keep host residency connected to the root, like device residency
        needed = len(node.page_ids) - self.host.num_free
        if needed > 0 and evict_host:
            self.evict_host(needed)
        return self.tier.plan_backup(node)

    # -- eviction -----------------------------------------------------------------------------

    def _is_candidate(self, node: RadixNode) -> bool:
        return bool(node.page_ids) and not any(c.page_ids for c in node.children.values())

    def _evict_from_leaf(self, leaf: RadixNode, budget: int) -> list[int]:
        if self.write_policy == "write_back" and not leaf.host_slots:
            # Nothing is hosted before eviction under write_back, so the leaf's ancestors go
            # too (they stay on the device as well). No host eviction here: a request being
            # admitted may be loading host-only nodes.
            self._back_up_path(leaf, evict_host=False)
        if not leaf.host_slots:
            self._drop_subtree_hosts(leaf)
            return super()._evict_from_leaf(leaf, budget)
        if budget < len(leaf.page_ids):
            self._split(leaf, (len(leaf.page_ids) - budget) * self.page_size)
        pages, leaf.page_ids = leaf.page_ids, []
        parent = leaf.parent
        if not parent.is_root and self._is_candidate(parent) and parent.lock_ref == 0:
            self._push_candidate(parent)
        if leaf.is_leaf:
            self.tier.push_candidate(leaf)
        return pages

    def _drop_subtree_hosts(self, node: RadixNode) -> None:
        """Frees the host slots of `node` and of every node below it (all host-only: device
        residency is connected to the root), before the subtree leaves the tree."""
        stack = [node]
        while stack:
            current = stack.pop()
            self.tier.release(current)
            stack.extend(current.children.values())
            if current is not node:
                current.evicted = True

    def evict_host(self, num_slots: int) -> int:
        """Frees up to `num_slots` host slots, least recently used host-only leaves first."""
        freed = 0
        for leaf in self.tier.host_candidates(num_slots):
            parent = leaf.parent
            assert parent is not None
            freed += self.tier.release(leaf)
            del parent.children[leaf.key[: self.page_size]]
            leaf.parent, leaf.evicted = None, True
            if parent.is_root:
                self._roots.prune(parent)
            elif not parent.page_ids and parent.is_leaf:
                self.tier.push_candidate(parent)
        return freed

    # -- shared bookkeeping -------------------------------------------------------------------

    def _give_device_pages(self, node: RadixNode, pages: list[int]) -> None:
        node.page_ids = pages
        self._num_cached_pages += len(pages)
        if node.lock_ref == 0:
            self._num_evictable_pages += len(pages)
        if self._is_candidate(node) and node.lock_ref == 0:
            self._push_candidate(node)

    def _split(self, node: RadixNode, num_tokens: int) -> RadixNode:
        head = super()._split(node, num_tokens)
        self.tier.split(head, node, num_tokens // self.page_size)
        return head

    def _check_node(self, node: RadixNode) -> None:
        num_pages = len(node.key) // self.page_size
        expect(len(node.key) == num_pages * self.page_size and num_pages > 0, "bad edge")
        expect(len(node.page_ids) in (0, num_pages), "a node holds part of its device pages")
        expect(len(node.host_slots) in (0, num_pages), "a node holds part of its host slots")
        expect(bool(node.page_ids or node.host_slots), "a node holds its pages nowhere")
        parent = node.parent
        expect(not node.page_ids or parent.is_root or bool(parent.page_ids),
               "device residency is not connected to the root")
        expect(node.page_ids or node.lock_ref == 0, "a host-only node is locked")

    def check_consistency(self) -> None:
        super().check_consistency()
        self.tier.check(list(self._roots))

    def drop_host_tier(self, host: HostSlots) -> None:
        """Forgets every host copy (the host pool is gone or replaced): host-only subtrees leave
        the tree, the other nodes keep their device pages; `host` is the new pool's slots."""
        roots = list(self._roots)
        stack = [child for root in roots for child in root.children.values()]
        while stack:
            node = stack.pop()
            node.host_slots, node.from_storage, node.from_remote = [], False, False
            if node.page_ids:
                stack.extend(node.children.values())
                continue
            del node.parent.children[node.key[: self.page_size]]
            node.parent = None
            gone = [node]
            while gone:
                dropped = gone.pop()
                dropped.evicted, dropped.host_slots = True, []
                gone.extend(dropped.children.values())
        for root in roots:
            self._roots.prune(root)
        self.tier.host = host
        self.tier.storing.clear()
        self.tier.num_prefetching = 0

    def reset(self) -> None:
        for root in self._roots:
            self._drop_subtree_hosts(root)
        super().reset()
