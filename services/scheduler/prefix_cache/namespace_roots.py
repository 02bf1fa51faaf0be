"""The roots of a radix tree split by cache salt: one tree per prefix-cache namespace.

A request's `cache_salt` (vLLM's field) must keep its pages apart from every other salt's, and
from unsalted requests', in every tier. Giving each salt a root of its own does that with no
change to how a tree is walked, matched, locked or evicted: nodes under one root are never
reachable from another, so no match can cross namespaces, and page keys chain from the root's
own h_0 (the salted namespace's, see `shared/page_keys.py`), so L2, L3, Redis and peers tell
them apart as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from radixmesh.services.scheduler.prefix_cache.radix_node import RadixNode


class NamespaceRoots:
    """Invariants (`check`):
    - the unsalted root always exists; a salted root is registered (`roots`) while it has
      children or locks, and forgotten once it has neither, so salts that come and go leave
      nothing behind;
    - a root handle is resolved by its salt (`registered`): a match under a salt that has no
      root yet gets a detached root, which becomes the registered one at its first lock or
      insert, or stands for the one registered meanwhile, so a root handle is never stale.
    """

    def __init__(self, make_root: Callable[[str | None], RadixNode]) -> None:
        self._make_root = make_root
        self.unsalted = make_root(None)
        self._salted: dict[str, RadixNode] = {}

    def for_salt(self, salt: str | None) -> RadixNode:
        """The registered root of `salt`, or a detached one: matching never registers."""
        if salt is None:
            return self.unsalted
        root = self._salted.get(salt)
        return root if root is not None else self._make_root(salt)

    def registered(self, root: RadixNode) -> RadixNode:
        """The root registered for `root`'s salt, registering `root` when there is none."""
        if root.salt is None:
            return self.unsalted
        return self._salted.setdefault(root.salt, root)

    def for_insert(self, salt: str | None) -> RadixNode:
        return self.registered(self.for_salt(salt))

    def prune(self, node: RadixNode) -> None:
        """Forgets `node` if it is a salted root that now holds and protects nothing."""
        if (node.is_root and node.salt is not None and not node.children
                and node.lock_ref == 0 and self._salted.get(node.salt) is node):
            del self._salted[node.salt]

    def __iter__(self) -> Iterator[RadixNode]:
        yield self.unsalted
        yield from list(self._salted.values())

    def __len__(self) -> int:
        return 1 + len(self._salted)

    @property
    def num_locks(self) -> int:
        """Locks outstanding: each lock counts once on its root."""
        return sum(root.lock_ref for root in self)

    def clear(self) -> None:
        self._salted.clear()

    def check(self, expect: Callable[[bool, str], None]) -> None:
        expect(self.unsalted.salt is None, "the unsalted root has a salt")
        for salt, root in self._salted.items():
            expect(root.salt == salt, f"root of salt {salt!r} filed under another")
            expect(bool(root.children) or root.lock_ref > 0, "an empty salted root is kept")
