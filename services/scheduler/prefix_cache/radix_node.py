"""One node of the radix prefix cache: plain state, acted on only by `RadixCache`."""

from __future__ import annotations

from dataclasses import dataclass, field

PageKey = tuple[int, ...]
"""The token ids of one page: how a node finds its children."""


@dataclass(eq=False, slots=True)
class RadixNode:
    """The edge into a node of the radix tree, and that node's bookkeeping.

    Invariants (`RadixCache.check_consistency` verifies them):
    - `len(key) == len(page_ids) * page_size`, and both are empty only at a root (one per
      cache salt, see `NamespaceRoots`); `salt` is set only on a salted root.
    - `parent.children[key[:page_size]] is self` while the node is in the tree.
    - `lock_ref` counts the locks held on this node plus those on all its descendants, so
      `lock_ref == 0` means no lock reaches anything in this subtree.
    - `last_access` is never older than any descendant's: a use touches the whole path.
    - `in_heap` is true while the cache's eviction heap holds an entry for the node.
    - `evicted` is set once the node leaves the tree; a handle naming it is then stale.

    Identity equality (`eq=False`) on purpose: nodes are handles, and two distinct nodes are
    never interchangeable even when their fields agree.
    """

    key: PageKey
    page_ids: list[int]
    parent: RadixNode | None
    children: dict[PageKey, RadixNode] = field(default_factory=dict)
    lock_ref: int = 0
    last_access: int = 0
    in_heap: bool = False
    evicted: bool = False
    # The hierarchical cache's tiers (HiRadixCache); the plain cache leaves them empty.
    host_slots: list[int] = field(default_factory=list)  # one per page, or none
    page_keys: list[bytes] = field(default_factory=list)  # chained keys, one per page, with L3
    from_storage: bool = False  # its host copy came from L3 and no request has used it yet
    from_remote: bool = False   # ... from another node (from_storage is set too)
    in_host_heap: bool = False
    salt: str | None = None  # a root's: the cache salt whose namespace it heads

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def is_root(self) -> bool:
        return not self.key
