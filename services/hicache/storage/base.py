"""The L3 storage interface: whole KV pages by page key, beyond one process and one restart."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from radixmesh.services.hicache.page_checksum import page_checksum


@dataclass(frozen=True, slots=True)
class StorageUsage:
    """What a backend holds now: `bytes_used` of at most `capacity_bytes`, in `num_files` pages."""

    bytes_used: int
    capacity_bytes: int
    num_files: int


@dataclass(frozen=True, slots=True)
class StorageStats:
    """Counters since the backend started; each only grows.

    `corrupt_removed` counts pages dropped because their data failed its check; `evicted` those
    dropped to stay under the capacity; `write_failures` puts an OS error stopped.
    """

    hits: int = 0
    misses: int = 0
    corrupt_removed: int = 0
    evicted: int = 0
    write_failures: int = 0

    def plus(self, **deltas: int) -> StorageStats:
        """These counters with `deltas` added (`plus(hits=1)`)."""
        return replace(self, **{name: getattr(self, name) + delta
                                for name, delta in deltas.items()})


@dataclass(frozen=True, slots=True)
class StoredPage:
    """A page's bytes and the checksum it was stored with, for another node to check."""

    data: bytes
    checksum: bytes


class PageListener(Protocol):
    """Who advertises a backend's pages (the page index): told of each change, under the
    backend's lock, so it must be quick and must never call the backend back."""

    def held(self, keys: Sequence[bytes]) -> None: ...

    def gone(self, keys: Sequence[bytes]) -> None: ...


class StorageBackend(ABC):
    """Pages of KV bytes named by their page key (`radixmesh.shared.page_keys`).

    Invariants every implementation keeps:
    - Never wrong data: `get` returns exactly the bytes a `put` of that key stored, or None.
      Data that fails its check (truncated, corrupt, written for another key or namespace) is a
      miss, is dropped, and counts in `stats.corrupt_removed`.
    - A key's data never changes (the key names the tokens and everything that shaped their KV),
      so a `put` of a key already held keeps the stored copy and succeeds.
    - Storage failing degrades, never raises: a `put` that cannot store returns False, a read
      that fails is a miss. Only a programming error (a key that is not 32 bytes) raises.
    - `usage().bytes_used <= usage().capacity_bytes` after every call; making room evicts the
      least recently used pages first (a `put` or a hit is a use; `contains_prefix` is not).
    - Safe to call from several threads at once.
    - The `listener` the backend was built with, if any, hears of every page stored
      (`held`, once its data is in place) and of every page that leaves (`gone`: evicted,
      deleted, cleared, dropped as corrupt or missing), in the order they happen; what a
      restart found is `keys()`. The listener must not call the backend.
    """

    @abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """The page's bytes, or None on a miss."""

    def get_for_peer(self, key: bytes) -> StoredPage | None:
        """The page's bytes and checksum for another node, which checks both itself; None on a
        miss. A backend that stores the checksum with the page returns it without hashing the
        bytes again; this default reads the page (checked) and hashes it."""
        data = self.get(key)
        return None if data is None else StoredPage(data, page_checksum(data))

    @abstractmethod
    def put(self, key: bytes, data: bytes | memoryview) -> bool:
        """Stores the page; False when it was not stored (writes are off, it cannot fit).

        `data` may be a byte view (a host pool slot), so a page reaches storage with no copy.
        """

    @abstractmethod
    def contains_prefix(self, keys: Sequence[bytes]) -> int:
        """How many leading `keys` are held (stops at the first miss); reads no page data."""

    @abstractmethod
    def keys(self) -> list[bytes]:
        """A snapshot of the keys held (what a restart found, and what was stored since)."""

    @abstractmethod
    def delete(self, key: bytes) -> bool:
        """Drops the page; True when it was held."""

    @abstractmethod
    def clear(self) -> int:
        """Drops every page of this backend's namespace (`/flush_cache`); returns how many.

        Pages another namespace stored in the same place are theirs and stay.
        """

    @abstractmethod
    def usage(self) -> StorageUsage:
        """Bytes used, capacity and page count now."""

    @property
    @abstractmethod
    def stats(self) -> StorageStats:
        """A snapshot of the counters."""

    @property
    def writable(self) -> bool:
        """False once writes are off for good (a full or read-only store); reads go on."""
        return True

    def close(self) -> None:  # noqa: B027 - a hook: most backends hold nothing to release
        """Releases what the backend holds (connections, handles); the backend is done after."""
