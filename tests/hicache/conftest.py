"""A real L3 directory for the storage tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from radixmesh.services.hicache.storage import FileStorageBackend
from tests.hicache.pages import ROOT, BackendFactory


@pytest.fixture
def l3_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "l3"


@pytest.fixture
def make_backend(l3_dir: Path) -> BackendFactory:
    """A backend on `l3_dir` (the same directory on every call: a second call is a restart)."""
    def make(capacity_bytes: int | None = 1 << 20, namespace_root: bytes = ROOT,
             **options: object) -> FileStorageBackend:
        return FileStorageBackend(l3_dir, namespace_root, capacity_bytes=capacity_bytes,
                                  **options)  # type: ignore[arg-type]
    return make
