"""A small KV layout and slot payloads shared by the hicache core and server tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from radixmesh.services.hicache.attachment import Attachment, KVLayout
from radixmesh.shared.host_pool import HostPool, HostPoolLayout
from radixmesh.shared.page_keys import KeyNamespace, page_keys

LAYOUT = KVLayout(num_layers=2, page_size=4, num_kv_heads=2, head_dim=8, dtype="float32")
SLOT_BYTES = LAYOUT.host_pool_layout(1).bytes_per_slot  # 2 layers x K,V x 4 x 2 x 8 x 4 = 1024
NAMESPACE_ROOT = KeyNamespace(model_id="tiny-llama", weights_fingerprint="ab12",
                              kv_dtype="float32", page_size=LAYOUT.page_size,
                              tp_layout="tp1").root()
OTHER_ROOT = KeyNamespace(model_id="other-model", weights_fingerprint="cd34",
                          kv_dtype="float32", page_size=LAYOUT.page_size, tp_layout="tp1").root()
CHAIN = page_keys(NAMESPACE_ROOT, range(16 * LAYOUT.page_size), LAYOUT.page_size)


def slot_payload(index: int) -> bytes:
    """A distinct slot's worth of bytes for page `index`."""
    return bytes((index * 7 + offset) % 251 for offset in range(SLOT_BYTES))


def pool_layout(attachment: Attachment) -> HostPoolLayout:
    """The layout the worker maps the attached pool with: slot 0 included."""
    return LAYOUT.host_pool_layout(attachment.num_slots + 1)


@contextmanager
def mapped(attachment: Attachment) -> Iterator[HostPool]:
    """The pool as the worker sees it, mapped by name."""
    pool = HostPool.attach(attachment.pool_name, pool_layout(attachment))
    try:
        yield pool
    finally:
        pool.close()
