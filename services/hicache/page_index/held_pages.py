"""The pages a node advertises, and the changes to them its index has not written yet.

Fed from the hicache core's threads (a store, an eviction inside the backend) and drained by
the index's writer on the event loop; one lock guards both sides, never held across I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

PUBLISH, REMOVE = True, False


class HeldPages:
    """Invariant: `changes` holds, for each key whose entry may differ from what `held` says,
    the last change (PUBLISH or REMOVE); writing every change in one go makes the store agree
    with `held`, whatever order the writes of one go land in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[bytes] = set()
        self._changes: dict[bytes, bool] = {}
        self.wake: Callable[[], None] = lambda: None  # the writer's, once it runs

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def add(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            idle = not self._changes
            for key in keys:
                self._held.add(key)
                self._changes[key] = PUBLISH
        self._wake_if(idle)

    def remove(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            idle = not self._changes
            for key in keys:
                self._held.discard(key)
                self._changes[key] = REMOVE
        self._wake_if(idle)

    def reset(self, keys: Iterable[bytes]) -> None:
        new = set(keys)
        with self._lock:
            idle = not self._changes
            for key in self._held - new:
                self._changes[key] = REMOVE
            for key in new - self._held:
                self._changes[key] = PUBLISH
            self._held = new
        self._wake_if(idle)

    def take_changes(self) -> dict[bytes, bool]:
        with self._lock:
            changes, self._changes = self._changes, {}
        return changes

    def take_all(self) -> tuple[list[bytes], list[bytes]]:
        """For a full re-publish: every held key, and the removals still due; the publishes
        pending are part of the first, so every pending change is taken."""
        with self._lock:
            removals = [key for key, change in self._changes.items() if change is REMOVE]
            self._changes = {}
            return list(self._held), removals

    def _wake_if(self, idle: bool) -> None:
        # One wake per batch: changes made while others wait are taken with them (a store of
        # many pages calls `add` once per page, from under the backend's lock).
        if idle and self._changes:
            self.wake()

    def put_back(self, changes: dict[bytes, bool]) -> None:
        """Changes a failed write did not make; a newer change of the same key wins."""
        with self._lock:
            for key, change in changes.items():
                self._changes.setdefault(key, change)
