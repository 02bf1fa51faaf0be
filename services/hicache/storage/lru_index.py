"""Which pages a backend holds, their sizes, and the order they were last used in."""

from __future__ import annotations

from collections import OrderedDict


class LruIndex:
    """Page key -> size in bytes, least recently used first.

    Invariant: `bytes_used` is the sum of the sizes held. Not thread-safe: its owner serialises
    every call (the backend's lock).
    """

    def __init__(self) -> None:
        self._sizes: OrderedDict[bytes, int] = OrderedDict()
        self.bytes_used = 0

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def add(self, key: bytes, size: int) -> None:
        """Holds `key` as the most recently used page (replacing its size if it was held)."""
        self.remove(key)
        self._sizes[key] = size
        self.bytes_used += size

    def touch(self, key: bytes) -> bool:
        """Marks `key` as just used; False when it is not held."""
        if key not in self._sizes:
            return False
        self._sizes.move_to_end(key)
        return True

    def remove(self, key: bytes) -> bool:
        size = self._sizes.pop(key, None)
        if size is None:
            return False
        self.bytes_used -= size
        return True

    def keys(self) -> list[bytes]:
        """A snapshot of the keys held, least recently used first."""
        return list(self._sizes)

    def oldest(self) -> bytes | None:
        """The least recently used key, or None when nothing is held."""
        return next(iter(self._sizes), None)
