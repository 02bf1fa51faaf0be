"""The L2 slot allocator (metadata only): which host slots are free, which hold valid bytes.

The bytes live in the hicache service's shared memory; the worker writes them (backups) and
reads them (loads), the hicache service reads them (stores to L3) and writes them
(prefetches). The scheduler decides all of it, so it alone knows when a slot's bytes are valid
and when a slot may be handed out again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

UNPLANNED = 1 << 62  # a backup whose plan has not been sent yet: valid at no step


class HostSlots:
    """Slot ids 1..num_slots (slot 0 is never granted, like device page 0).

    Invariants:
    - every slot is exactly one of: free, quarantined (freed while a plan in flight may still
      touch it), or held (by a tree node, or by a prefetch under way);
    - a held slot's bytes are valid once the worker reported `backed_up_through` at or past the
      step that carried its backup (`ready_step`); slots filled by a prefetch are valid at once;
    - a quarantined slot becomes free once `backed_up_through` reaches the step it waits for:
      by then every plan that could read or write it has run on the worker; until then only
      the worker's own (ordered) copies may reuse it;
    - `last_use(slots)` is the last step whose plan copies to or from any of them (planned
      copies included): a slot freed with `after_step=last_use(...)` already acknowledged is
      free at once, so host eviction can make room for a prefetch.
    """

    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._free: list[int] = list(range(num_slots, 0, -1))
        self._ready_step = [0] * (num_slots + 1)
        self._last_use = [0] * (num_slots + 1)
        self._quarantine: list[tuple[int, list[int]]] = []  # (step to wait for, slots)
        self._num_quarantined = 0
        self._backups: deque[tuple[int, list[int]]] = deque()  # planned, not acknowledged
        self.backed_up_through = 0
        self.keys: dict[int, bytes] = {}  # page key of a held slot, when L3 is on

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_quarantined(self) -> int:
        return self._num_quarantined

    def alloc(self, count: int, for_worker: bool = True) -> list[int] | None:
        """`count` slots whose bytes are not valid yet, or None (taking nothing).

        Slots for the worker's own copies (backups) may come out of quarantine: the worker runs
        plans in order, so a later plan's write lands after any earlier plan touched the slot.
        A prefetch, written by the hicache service out of that order, takes free slots only.
        """
        available = len(self._free) + (self._num_quarantined if for_worker else 0)
        if count > available:
            return None
        while len(self._free) < count:
            _, slots = self._quarantine.pop()
            self._num_quarantined -= len(slots)
            self._free.extend(slots)
        slots = self._free[len(self._free) - count:]
        del self._free[len(self._free) - count:]
        for slot in slots:
            self._ready_step[slot] = UNPLANNED
        return slots

    def mark_filled(self, slots: Iterable[int]) -> None:
        """A prefetch wrote these slots: valid now."""
        for slot in slots:
            self._ready_step[slot] = 0

    def plan_use(self, slots: Sequence[int], step_id: int) -> None:
        """The plan of `step_id` (sent or not yet) copies to or from these slots."""
        for slot in slots:
            self._last_use[slot] = max(self._last_use[slot], step_id)

    def last_use(self, slots: Sequence[int]) -> int:
        return max((self._last_use[slot] for slot in slots), default=0)

    def plan_backup(self, slots: Sequence[int], step_id: int) -> None:
        for slot in slots:
            self._ready_step[slot] = step_id
        self._backups.append((step_id, list(slots)))

    def is_valid(self, slots: Sequence[int]) -> bool:
        return all(self._ready_step[slot] <= self.backed_up_through for slot in slots)

    def free(self, slots: Sequence[int], after_step: int) -> None:
        """Gives slots back once the worker has run every plan up to `after_step`."""
        if not slots:
            return
        for slot in slots:
            self.keys.pop(slot, None)
        if after_step <= self.backed_up_through:
            self._free.extend(slots)
            return
        self._quarantine.append((after_step, list(slots)))
        self._num_quarantined += len(slots)

    def release(self, slots: Sequence[int]) -> None:
        """Frees slots once every plan that copies to or from them has run on the worker."""
        self.free(slots, after_step=self.last_use(slots))

    def acknowledge(self, backed_up_through: int) -> list[int]:
        """Records the worker's progress; returns the slots holding a keyed page whose backup
        just landed (what L3 may store now)."""
        if backed_up_through <= self.backed_up_through:
            return []
        self.backed_up_through = backed_up_through
        landed: list[int] = []
        while self._backups and self._backups[0][0] <= backed_up_through:
            landed.extend(slot for slot in self._backups.popleft()[1] if slot in self.keys)
        kept = []
        for step, slots in self._quarantine:
            if step <= self.backed_up_through:
                self._free.extend(slots)
                self._num_quarantined -= len(slots)
            else:
                kept.append((step, slots))
        self._quarantine = kept
        return landed
