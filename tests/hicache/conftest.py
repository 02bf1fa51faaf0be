"""A real L3 directory for the storage tests, hicache cores on one, and a real Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from radixmesh.services.hicache.cache import HiCache
from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.services.hicache.storage import FileStorageBackend
from tests.hicache.pages import ROOT, BackendFactory
from tests.hicache.redis_server import REDIS_BINARY, RedisServer


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


@pytest.fixture
def make_cache(tmp_path: Path) -> Iterator[Callable[..., HiCache]]:
    """HiCache cores with a file L3 under `tmp_path/hicache` unless told otherwise; every one
    is closed (its segment unlinked) at the end of the test."""
    made: list[HiCache] = []

    def make(**overrides: object) -> HiCache:
        options: dict[str, object] = {"hicache_storage_backend": "file",
                                      "hicache_storage_dir": str(tmp_path / "hicache"),
                                      "hicache_storage_size": 0.01}
        cache = HiCache(HiCacheConfig(**{**options, **overrides}))  # type: ignore[arg-type]
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the module, on a free port, in a temporary directory."""
    if REDIS_BINARY is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()
