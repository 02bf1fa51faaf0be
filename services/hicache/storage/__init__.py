"""L3 storage backends by name: what `--hicache-storage-backend` chooses."""

from __future__ import annotations

from radixmesh.services.hicache.storage.base import (
    PageListener,
    StorageBackend,
    StorageStats,
    StorageUsage,
    StoredPage,
)
from radixmesh.services.hicache.storage.file_backend import FileStorageBackend
from radixmesh.shared.registry import Registry

__all__ = [
    "FileStorageBackend",
    "PageListener",
    "STORAGE_BACKENDS",
    "StorageBackend",
    "StorageStats",
    "StorageUsage",
    "StoredPage",
    "make_storage_backend",
]

STORAGE_BACKENDS: Registry[type[StorageBackend]] = Registry("storage backend")
STORAGE_BACKENDS.add("file", FileStorageBackend)


def make_storage_backend(name: str, **options: object) -> StorageBackend:
    """The backend registered as `name`, built with its own options (`directory=...` for file).

    An unknown name raises UnknownNameError listing the registered ones.
    """
    return STORAGE_BACKENDS.get(name)(**options)
