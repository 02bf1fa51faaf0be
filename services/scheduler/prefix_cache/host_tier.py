"""The host side of HiRadixCache: which node holds which host slots, the copies planned for the
next step, the LRU order of host-only leaves, and the page keys L3 names pages by."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence

from radixmesh.services.scheduler.host_slots import HostSlots
from radixmesh.services.scheduler.prefix_cache.radix_cache import expect
from radixmesh.services.scheduler.prefix_cache.radix_node import RadixNode
from radixmesh.shared.page_keys import page_keys
from radixmesh.shared.step import NO_COPIES, PageCopies


class HostTier:
    """Acted on only by HiRadixCache. Invariants (`check`):
    - a slot is held by at most one node, and held slots = total - free - quarantined - the
      slots of prefetches under way (`num_prefetching`);
    - with a key root, a node's `page_keys` are all of its pages' or none yet, chained from
      its parent's last key; they are computed when first asked for (`node_keys`): only L3,
      the page index and peers name pages by key, so without L3 no page is ever hashed;
    - with `keyed` (L3 on), every backed-up slot's key is in `host.keys`;
    - `storing` holds slots whose bytes the hicache service is copying to L3: their nodes are
      not host-evicted until the store answers.
    """

    def __init__(self, page_size: int, host: HostSlots, key_root: bytes | None) -> None:
        self.page_size = page_size
        self.host = host
        self.key_root = key_root
        # Whether backups note their slots' keys for L3; HostCache sets it as each pool attaches.
        self.keyed = key_root is not None
        self.next_step = 1  # the step id of the next plan: what pending copies ride on
        self.storing: set[int] = set()
        self.num_prefetching = 0
        self._loads: list[tuple[int, int]] = []    # (device page, host slot)
        self._backups: list[tuple[int, int]] = []
        self._heap: list[tuple[int, int, RadixNode]] = []
        self._seq = itertools.count()

    # -- validity and keys --------------------------------------------------------------------

    def is_valid(self, node: RadixNode) -> bool:
        return bool(node.host_slots) and self.host.is_valid(node.host_slots)

    def node_keys(self, node: RadixNode) -> list[bytes]:
        """`node`'s page keys, hashed now where they (or its ancestors') are not yet. A root's
        are its namespace's h_0 for a salted root, none for the unsalted one."""
        missing = []
        while not node.is_root and not node.page_keys:
            missing.append(node)
            node = node.parent
        for below in reversed(missing):
            below.page_keys = self.keys_after(below.parent, below.key)
        return missing[0].page_keys if missing else node.page_keys

    def keys_after(self, node: RadixNode, token_ids: Sequence[int]) -> list[bytes]:
        """The keys of the pages of `token_ids`, which follow `node`'s last page (the root:
        they start the chain)."""
        assert self.key_root is not None, "page keys need a key root"
        keys = self.node_keys(node)
        return page_keys(self.key_root, token_ids, self.page_size,
                         parent=keys[-1] if keys else None)

    def split(self, head: RadixNode, tail: RadixNode, num_pages: int) -> None:
        head.host_slots, tail.host_slots = tail.host_slots[:num_pages], tail.host_slots[num_pages:]
        head.page_keys, tail.page_keys = tail.page_keys[:num_pages], tail.page_keys[num_pages:]
        head.from_storage, head.from_remote = tail.from_storage, tail.from_remote

    # -- planning copies ----------------------------------------------------------------------

    def plan_backup(self, node: RadixNode) -> bool:
        slots = self.host.alloc(len(node.page_ids), for_worker=True)
        if slots is None:
            return False
        node.host_slots = slots
        self.host.plan_use(slots, self.next_step)
        self._backups.extend(zip(node.page_ids, slots, strict=True))
        if self.keyed:
            for slot, key in zip(slots, self.node_keys(node), strict=True):
                self.host.keys[slot] = key
        return True

    def plan_load(self, node: RadixNode, device_pages: list[int]) -> None:
        self.host.plan_use(node.host_slots, self.next_step)
        self._loads.extend(zip(device_pages, node.host_slots, strict=True))
        node.from_storage = node.from_remote = False

    def adopt_prefetched(self, leaf: RadixNode, slots: list[int], keys: list[bytes],
                         remote: bool = False) -> None:
        leaf.host_slots, leaf.page_keys, leaf.from_storage = slots, keys, True
        leaf.from_remote = remote
        self.host.mark_filled(slots)
        for slot, key in zip(slots, keys, strict=True):
            self.host.keys[slot] = key
        self.push_candidate(leaf)

    def take_copies(self, step_id: int) -> tuple[PageCopies, PageCopies]:
        """The loads and backups planned since the last plan, riding on plan `step_id`."""
        loads, backups = self._loads, self._backups
        self._loads, self._backups = [], []
        self.next_step = step_id + 1
        if backups:
            self.host.plan_backup([slot for _, slot in backups], step_id)
        return _copies(loads), _copies(backups)

    @property
    def has_copies(self) -> bool:
        return bool(self._loads or self._backups)

    # -- releasing and host eviction ----------------------------------------------------------

    def release(self, node: RadixNode) -> int:
        """Frees `node`'s slots once every plan that copies to or from them has run on the
        worker: at once when those plans are acknowledged already. (Waiting for the next plan
        instead would quarantine every slot host eviction frees, and a prefetch, which takes
        free slots only, would find none once host memory is full.)"""
        slots, node.host_slots = node.host_slots, []
        self.host.release(slots)
        return len(slots)

    def push_candidate(self, node: RadixNode) -> None:
        if not node.in_host_heap:
            node.in_host_heap = True
            heapq.heappush(self._heap, (node.last_access, next(self._seq), node))

    def host_candidates(self, num_slots: int) -> Iterator[RadixNode]:
        """Host-only leaves, least recently used first, until `num_slots` slots are yielded."""
        yielded = 0
        requeue = []
        while yielded < num_slots and self._heap:
            last_access, _, node = heapq.heappop(self._heap)
            node.in_host_heap = False
            if node.evicted or node.page_ids or not node.is_leaf or not node.host_slots:
                continue
            if last_access != node.last_access:
                self.push_candidate(node)
                continue
            if self.storing.intersection(node.host_slots):
                requeue.append(node)  # L3 is reading it: evictable once the store answers
                continue
            yielded += len(node.host_slots)
            yield node
        for node in requeue:
            self.push_candidate(node)

    # -- L3 ------------------------------------------------------------------------------------

    def take_stores(self, backed_up_through: int) -> list[tuple[bytes, int]]:
        """Acknowledges the worker's backups; returns (key, slot) of pages that may go to L3
        now, marking their slots as being stored."""
        landed = self.host.acknowledge(backed_up_through)
        stores = [(self.host.keys[slot], slot) for slot in landed if slot not in self.storing]
        self.storing.update(slot for _, slot in stores)
        return stores

    def check(self, roots: Sequence[RadixNode]) -> None:
        held: set[int] = set()
        stack = [child for root in roots for child in root.children.values()]
        while stack:
            node = stack.pop()
            expect(held.isdisjoint(node.host_slots), "a host slot is held twice")
            held.update(node.host_slots)
            expect(len(node.page_keys) * self.page_size in (0, len(node.key)),
                   "a node holds part of its page keys")
            stack.extend(node.children.values())
        host = self.host
        expected = host.num_slots - host.num_free - host.num_quarantined - self.num_prefetching
        expect(len(held) == expected, f"host slots: held {len(held)} != {expected} (total "
               f"{host.num_slots}, free {host.num_free}, quarantined {host.num_quarantined}, "
               f"prefetching {self.num_prefetching})")


def _copies(pairs: list[tuple[int, int]]) -> PageCopies:
    if not pairs:
        return NO_COPIES
    pages, slots = zip(*pairs, strict=True)
    return PageCopies(tuple(pages), tuple(slots))
