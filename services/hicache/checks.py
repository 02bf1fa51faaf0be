"""Checks of what a caller names in a lookup or transfer; each failure names the field."""

from __future__ import annotations

from collections.abc import Sequence

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.page_keys import KEY_BYTES


def check_namespace_root(namespace_root: bytes) -> None:
    if len(namespace_root) != KEY_BYTES:
        raise InvalidRequestError("namespace_root", f"must be {KEY_BYTES} bytes (h_0 of the "
                                  f"page keys), got {len(namespace_root)}")


def check_keys(keys: Sequence[bytes]) -> None:
    for index, key in enumerate(keys):
        if len(key) != KEY_BYTES:
            raise InvalidRequestError(f"keys[{index}]",
                                      f"a page key is {KEY_BYTES} bytes, got {len(key)}")


def check_slots(slots: Sequence[int], num_keys: int, num_slots: int) -> None:
    """One slot per key, each a grantable id (1..num_slots) named once: two pages in one slot
    would leave one of them with the other's bytes."""
    if len(slots) != num_keys:
        raise InvalidRequestError("slots", f"{len(slots)} slots for {num_keys} keys")
    seen: set[int] = set()
    for index, slot in enumerate(slots):
        if not 1 <= slot <= num_slots:
            raise InvalidRequestError(f"slots[{index}]",
                                      f"slot {slot} is out of range [1, {num_slots}]")
        if slot in seen:
            raise InvalidRequestError(f"slots[{index}]", f"slot {slot} is named twice")
        seen.add(slot)
