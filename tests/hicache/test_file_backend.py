"""The file L3 backend on a real directory: round trips, checks, LRU, restarts."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from radixmesh.services.hicache.storage import (
    STORAGE_BACKENDS,
    FileStorageBackend,
    StorageStats,
    make_storage_backend,
)
from radixmesh.services.hicache.storage.page_file import HEADER_BYTES, MAGIC, PageHeader
from radixmesh.shared.registry import UnknownNameError
from tests.hicache.pages import (
    KEYS,
    NAMESPACE,
    PAGE_FILE_BYTES,
    PAYLOAD_BYTES,
    ROOT,
    BackendFactory,
    page_path,
    payload,
)


def test_round_trip(make_backend: BackendFactory) -> None:
    backend = make_backend()
    assert backend.put(KEYS[0], payload(0))
    assert backend.put(KEYS[1], memoryview(bytearray(payload(1))))  # a host slot's view
    assert backend.get(KEYS[0]) == payload(0)
    assert backend.get(KEYS[1]) == payload(1)
    assert backend.get(KEYS[2]) is None
    assert backend.stats == StorageStats(hits=2, misses=1)
    usage = backend.usage()
    assert (usage.bytes_used, usage.num_files) == (2 * PAGE_FILE_BYTES, 2)


def test_a_held_key_keeps_its_copy(make_backend: BackendFactory, l3_dir: Path) -> None:
    backend = make_backend()
    assert backend.put(KEYS[0], payload(0))
    assert backend.put(KEYS[0], payload(0))
    assert os.listdir(l3_dir) == [KEYS[0].hex()]
    assert backend.usage().num_files == 1


def test_contains_prefix(make_backend: BackendFactory) -> None:
    backend = make_backend()
    for index in (0, 1, 2, 4):
        backend.put(KEYS[index], payload(index))
    assert backend.contains_prefix(KEYS[:6]) == 3
    assert backend.contains_prefix(KEYS[:2]) == 2
    assert backend.contains_prefix(KEYS[3:6]) == 0
    assert backend.contains_prefix([]) == 0


def test_delete(make_backend: BackendFactory, l3_dir: Path) -> None:
    backend = make_backend()
    backend.put(KEYS[0], payload(0))
    assert backend.delete(KEYS[0])
    assert not backend.delete(KEYS[0])
    assert not page_path(l3_dir, 0).exists()
    assert backend.get(KEYS[0]) is None and backend.usage().bytes_used == 0


def test_private_permissions(make_backend: BackendFactory, l3_dir: Path) -> None:
    make_backend(fsync=True).put(KEYS[0], payload(0))
    assert stat.S_IMODE(l3_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(page_path(l3_dir, 0).stat().st_mode) == 0o600


def test_file_format(make_backend: BackendFactory, l3_dir: Path) -> None:
    make_backend().put(KEYS[3], payload(3))
    raw = page_path(l3_dir, 3).read_bytes()
    assert raw.startswith(MAGIC) and len(raw) == PAGE_FILE_BYTES
    header = PageHeader.unpack(raw)
    assert header is not None and header.names(KEYS[3], ROOT)
    assert header.checks(raw[HEADER_BYTES:]) and raw[HEADER_BYTES:] == payload(3)


def test_unfinished_writes_are_invisible_and_cleared(
        make_backend: BackendFactory, l3_dir: Path) -> None:
    l3_dir.mkdir(parents=True)
    (l3_dir / f".tmp-{KEYS[0].hex()}-abc123").write_bytes(MAGIC + b"garbage")
    (l3_dir / ".tmp-whatever").write_bytes(b"")
    (l3_dir / "notes.txt").write_text("not ours: left alone")
    backend = make_backend()
    assert backend.get(KEYS[0]) is None
    assert backend.usage().num_files == 0
    assert sorted(os.listdir(l3_dir)) == ["notes.txt"]


def corrupt_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x40]))


def assert_dropped_as_corrupt(backend: FileStorageBackend, path: Path, index: int) -> None:
    assert backend.get(KEYS[index]) is None
    assert not path.exists()
    assert backend.stats.corrupt_removed == 1
    assert backend.contains_prefix([KEYS[index]]) == 0


@pytest.mark.parametrize("offset", [0, 8, 10, 42, 74, 82, HEADER_BYTES, PAGE_FILE_BYTES - 1],
                         ids=["magic", "version", "key", "namespace", "length", "checksum",
                              "payload-first", "payload-last"])
def test_any_changed_byte_is_a_miss(
        make_backend: BackendFactory, l3_dir: Path, offset: int) -> None:
    backend = make_backend()
    backend.put(KEYS[0], payload(0))
    corrupt_byte(page_path(l3_dir, 0), offset)
    assert_dropped_as_corrupt(backend, page_path(l3_dir, 0), 0)
    assert backend.usage().bytes_used == 0
    assert backend.put(KEYS[0], payload(0)) and backend.get(KEYS[0]) == payload(0)


@pytest.mark.parametrize("length", [0, 7, HEADER_BYTES - 1, HEADER_BYTES,
                                    HEADER_BYTES + PAYLOAD_BYTES // 2, PAGE_FILE_BYTES + 1])
def test_wrong_length_is_a_miss(make_backend: BackendFactory, l3_dir: Path, length: int) -> None:
    backend = make_backend()
    backend.put(KEYS[0], payload(0))
    path = page_path(l3_dir, 0)
    raw = path.read_bytes() + b"\0"
    path.write_bytes(raw[:length])
    assert_dropped_as_corrupt(backend, path, 0)


def test_a_torn_file_found_at_start_is_a_miss(make_backend: BackendFactory, l3_dir: Path) -> None:
    l3_dir.mkdir(parents=True)
    page_path(l3_dir, 0).write_bytes(b"")  # renamed before its data reached the disk
    backend = make_backend()
    assert backend.contains_prefix(KEYS[:1]) == 1  # the index trusts names; the read checks
    assert_dropped_as_corrupt(backend, page_path(l3_dir, 0), 0)


def test_a_foreign_namespace_is_a_miss(make_backend: BackendFactory, l3_dir: Path) -> None:
    make_backend(namespace_root=bytes(32)).put(KEYS[0], payload(0))
    assert_dropped_as_corrupt(make_backend(), page_path(l3_dir, 0), 0)


def test_a_renamed_file_is_a_miss(make_backend: BackendFactory, l3_dir: Path) -> None:
    backend = make_backend()
    backend.put(KEYS[0], payload(0))
    backend.put(KEYS[1], payload(1))
    os.replace(page_path(l3_dir, 0), page_path(l3_dir, 1))
    assert_dropped_as_corrupt(backend, page_path(l3_dir, 1), 1)
    assert backend.get(KEYS[0]) is None  # its file is gone: forgotten, not corrupt
    assert backend.contains_prefix(KEYS[:1]) == 0
    assert backend.stats.corrupt_removed == 1 and backend.usage().num_files == 0


def test_lru_eviction(make_backend: BackendFactory, l3_dir: Path) -> None:
    backend = make_backend(capacity_bytes=3 * PAGE_FILE_BYTES)
    for index in range(3):
        assert backend.put(KEYS[index], payload(index))
    assert backend.get(KEYS[0]) == payload(0)  # 1 is now the least recently used
    assert backend.put(KEYS[3], payload(3))
    assert not page_path(l3_dir, 1).exists()
    assert [backend.contains_prefix([KEYS[i]]) for i in range(4)] == [1, 0, 1, 1]
    assert backend.put(KEYS[4], payload(4))  # then 2
    assert not page_path(l3_dir, 2).exists()
    assert backend.stats.evicted == 2
    assert backend.usage().bytes_used == 3 * PAGE_FILE_BYTES


def test_a_page_larger_than_the_cap_is_not_stored(make_backend: BackendFactory) -> None:
    backend = make_backend(capacity_bytes=PAGE_FILE_BYTES)
    assert not backend.put(KEYS[0], payload(0) + b"x")
    assert backend.put(KEYS[1], payload(1))  # writes stay on: only that page did not fit
    assert backend.stats.write_failures == 0
    assert make_backend(capacity_bytes=8).put(KEYS[2], b"") is False


def test_restart_serves_the_files_in_their_lru_order(
        make_backend: BackendFactory, l3_dir: Path) -> None:
    first = make_backend(capacity_bytes=4 * PAGE_FILE_BYTES)
    for index in range(3):
        first.put(KEYS[index], payload(index))
    first.get(KEYS[0])  # order of use: 1, 2, 0
    second = make_backend(capacity_bytes=4 * PAGE_FILE_BYTES)
    assert second.usage() == first.usage()
    assert second.get(KEYS[2]) == payload(2)  # now 1, 0, 2
    assert second.put(KEYS[3], payload(3))
    assert second.put(KEYS[4], payload(4))  # evicts 1: by write order it would be 0
    assert sorted(os.listdir(l3_dir)) == sorted(KEYS[i].hex() for i in (0, 2, 3, 4))


def test_restart_under_a_lower_cap_evicts_the_oldest(
        make_backend: BackendFactory, l3_dir: Path) -> None:
    first = make_backend()
    for index in range(4):
        first.put(KEYS[index], payload(index))
    second = make_backend(capacity_bytes=2 * PAGE_FILE_BYTES)
    assert sorted(os.listdir(l3_dir)) == sorted(KEYS[i].hex() for i in (2, 3))
    assert second.stats.evicted == 2 and second.usage().num_files == 2


def test_default_cap_is_free_space_less_ten_percent(
        make_backend: BackendFactory, l3_dir: Path) -> None:
    make_backend().put(KEYS[0], payload(0))
    backend = make_backend(capacity_bytes=None)
    expected = PAGE_FILE_BYTES + int(shutil.disk_usage(l3_dir).free * 0.9)
    assert abs(backend.usage().capacity_bytes - expected) < 64 << 20  # the disk is shared


def test_bad_keys_are_programming_errors(make_backend: BackendFactory) -> None:
    backend = make_backend()
    for call in (backend.get, backend.delete, lambda key: backend.put(key, b"")):
        with pytest.raises(ValueError, match="32 bytes"):
            call(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        make_backend(namespace_root=b"short")


def test_registry(l3_dir: Path) -> None:
    assert "file" in STORAGE_BACKENDS
    backend = make_storage_backend("file", directory=l3_dir, namespace_root=ROOT)
    assert isinstance(backend, FileStorageBackend)
    with pytest.raises(UnknownNameError, match="unknown storage backend 'nfs'; available: file"):
        make_storage_backend("nfs")


def test_clear_drops_this_namespace_only(make_backend: BackendFactory, l3_dir: Path) -> None:
    other = make_backend(namespace_root=NAMESPACE.with_salt("other").root())
    assert other.put(KEYS[10], payload(10))
    backend = make_backend()  # the same directory: it indexes the other's file too
    for index in range(3):
        assert backend.put(KEYS[index], payload(index))
    (l3_dir / KEYS[20].hex()).write_bytes(b"not a page file")
    backend = make_backend()
    assert backend.clear() == 4  # its 3 pages and the file that names no namespace
    assert os.listdir(l3_dir) == [KEYS[10].hex()]
    assert backend.usage().num_files == 1
    assert backend.contains_prefix(KEYS[:1]) == 0
    assert other.get(KEYS[10]) == payload(10)
