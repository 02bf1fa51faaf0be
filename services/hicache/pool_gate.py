"""Which pool and storage transfers run against, and when they may be swapped or closed.

Prefetch and store run on threads, each reading or writing slots of the pool and pages of the
backend for a while; a re-attach or close must not unmap the pool or close the backend under
them. The gate counts the transfers in flight and swaps the state only once none is.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from radixmesh.services.hicache.attachment import KVLayout
from radixmesh.services.hicache.errors import StalePoolError
from radixmesh.services.hicache.storage import StorageBackend
from radixmesh.shared.host_pool import HostPool


@dataclass(frozen=True, slots=True)
class Attached:
    """One attach's result: the pool sized for (`layout`, `num_device_pages`), its epoch, and the
    storage opened for `namespace_root` (None: no L3 configured)."""

    layout: KVLayout
    num_device_pages: int
    pool: HostPool
    epoch: str
    namespace_root: bytes
    backend: StorageBackend | None

    @property
    def num_slots(self) -> int:
        """Slots a caller may name (ids 1..num_slots): the pool less slot 0."""
        return self.pool.layout.num_slots - 1


class PoolGate:
    """Invariant: while a `use` block runs, the state it was given stays current (a swap waits
    for it), so its pool stays mapped and its backend open. Swaps are serialised by the caller."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._state: Attached | None = None
        self._users = 0
        self._swapping = False  # new users wait, so a stream of transfers cannot starve a swap

    @property
    def current(self) -> Attached | None:
        with self._cond:
            return self._state

    @contextmanager
    def use(self, epoch: str) -> Iterator[Attached]:
        """The current state, which must be of `epoch` (StalePoolError otherwise)."""
        state = self._enter()
        try:
            if state is None:
                raise StalePoolError("no host pool is attached: call Attach first")
            if state.epoch != epoch:
                raise StalePoolError(f"epoch {epoch!r} is not the pool's ({state.epoch!r}): "
                                     "the service restarted or the pool was replaced; "
                                     "re-attach and drop the host slots of the old epoch")
            yield state
        finally:
            self._leave()

    @contextmanager
    def use_current(self) -> Iterator[Attached | None]:
        """The current state whatever its epoch; None when nothing is attached."""
        state = self._enter()
        try:
            yield state
        finally:
            self._leave()

    def swap(self, new: Attached | None) -> Attached | None:
        """Makes `new` current once no transfer uses the old state; returns the old one."""
        with self._cond:
            self._swapping = True
            self._cond.wait_for(lambda: self._users == 0)
            old, self._state = self._state, new
            self._swapping = False
            self._cond.notify_all()
        return old

    def _enter(self) -> Attached | None:
        with self._cond:
            self._cond.wait_for(lambda: not self._swapping)
            self._users += 1
            return self._state

    def _leave(self) -> None:
        with self._cond:
            self._users -= 1
            if self._users == 0:
                self._cond.notify_all()
