"""The cross-node page index: which node holds which page (design §4, "Redis holds").

The hicache service tells its index which pages it holds (`held`, `gone`, `reset`, from any
thread) and asks it, per Lookup, which other node holds the leading pages of a chain it lacks.
An index is a hint: it may be stale or down, so every answer is "maybe", and a fetch (slice B)
checks the page it gets against its key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RemoteRun:
    """`num_pages` leading pages of a chain that node `node_id` (epoch `epoch`, its hicache
    service at `address`) said it held when asked."""

    node_id: str = ""
    address: str = ""
    epoch: str = ""
    num_pages: int = 0


NO_RUN = RemoteRun()


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Counters since start (each only grows), and two gauges: `connected` (the last exchange
    with the index store succeeded) and `held_pages` (the pages this node advertises)."""

    lookups: int = 0
    remote_hit_pages: int = 0
    errors: int = 0
    entries_written: int = 0
    entries_removed: int = 0
    connected: bool = False
    held_pages: int = 0


class PageIndex(ABC):
    """Invariants every implementation keeps:
    - Entries are per (page key, node): several nodes may hold one page; a node writes and
      removes only its own, and an entry names the epoch of the node's start that wrote it.
    - A page is advertised only once its data is in place (the caller calls `held` after the
      L3 write), and withdrawn when it leaves (`gone`); entries expire unless refreshed, so a
      node that dies stops being advertised without anyone cleaning up after it.
    - Entries of a node that is gone or restarted (another epoch) are never reported.
    - `lookup` never raises and never blocks past the configured deadline: any failure is a
      miss (NO_RUN), counted in `stats().errors`.
    - `held`, `gone` and `reset` are cheap, thread-safe and never block on the index store.
    """

    @abstractmethod
    async def start(self, address: str) -> None:
        """Connects (failing only on what will not heal: refused credentials) and starts
        advertising; `address` is where peers reach this node's hicache service."""

    @abstractmethod
    async def close(self) -> None:
        """Stops advertising; peers ignore this node's entries from now on."""

    @abstractmethod
    async def lookup(self, keys: Sequence[bytes]) -> RemoteRun:
        """The longest run of leading `keys` one other live node holds."""

    @abstractmethod
    def held(self, keys: Sequence[bytes]) -> None:
        """These pages are now in place on this node."""

    @abstractmethod
    def gone(self, keys: Sequence[bytes]) -> None:
        """These pages left this node."""

    @abstractmethod
    def reset(self, keys: Sequence[bytes]) -> None:
        """This node now holds exactly these pages (its L3 was opened anew)."""

    @abstractmethod
    def stats(self) -> IndexStats:
        """A snapshot of the counters."""
