"""Real page keys and page payloads shared by the storage tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from radixmesh.services.hicache.storage import FileStorageBackend
from radixmesh.services.hicache.storage.page_file import HEADER_BYTES
from radixmesh.shared.page_keys import KeyNamespace, page_keys

NAMESPACE = KeyNamespace(model_id="tiny-llama", weights_fingerprint="ab12", kv_dtype="float32",
                         page_size=1, tp_layout="tp1")
ROOT = NAMESPACE.root()
KEYS = page_keys(ROOT, range(64), 1)
PAYLOAD_BYTES = 100
PAGE_FILE_BYTES = HEADER_BYTES + PAYLOAD_BYTES

BackendFactory = Callable[..., FileStorageBackend]


def payload(index: int) -> bytes:
    """A distinct PAYLOAD_BYTES-long page for KEYS[index]."""
    return bytes((index + offset) % 256 for offset in range(PAYLOAD_BYTES))


def page_path(directory: Path, index: int) -> Path:
    return directory / KEYS[index].hex()
