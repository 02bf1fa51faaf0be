"""Pages crossing between nodes: what a peer sent, and the checks it passes before any of its
bytes reach an L2 slot (design §4: data that fails its check is a miss, never wrong output)."""

from __future__ import annotations

from dataclasses import dataclass

from radixmesh.services.hicache.page_checksum import page_checksum

# Pages per PageBatch are cut at this many bytes: messages of a few MiB keep gRPC's per-message
# cost small against the copy, and stay far below the internal links' message cap.
BATCH_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class ReceivedPage:
    """One page as a peer sent it (a PeerPage message's fields)."""

    key: bytes
    data: bytes | memoryview  # a view of the received message (page_batch_wire.py)
    checksum: bytes


def rejection(page: ReceivedPage, key: bytes, slot_bytes: int) -> str | None:
    """Why `page` may not fill the slot asked for `key`, or None when it may. The key names
    the namespace too (a chain starts from the namespace root), so a page of another model,
    dtype, page size or salt never passes."""
    if page.key != key:
        return "it names another key"
    if len(page.data) != slot_bytes:
        return f"it holds {len(page.data)} bytes, a slot {slot_bytes}"
    if page_checksum(page.data) != page.checksum:
        return "its bytes fail their checksum"
    return None
