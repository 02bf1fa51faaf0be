"""The file L3 backend when the disk says no: read-only, missing, full, failing; and threads."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from radixmesh.services.hicache.storage import FileStorageBackend, StorageUsage
from tests.hicache.pages import (
    KEYS,
    PAGE_FILE_BYTES,
    ROOT,
    BackendFactory,
    page_path,
    payload,
)

LOGGER = "radixmesh.services.hicache.storage.file_backend"


def _accepts_new_files(directory: Path) -> bool:
    probe = directory / "probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return False
    probe.unlink()
    return True


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Makes `directory` refuse new files for real: mode 0500, or, for root (whom modes do not
    stop), the immutable attribute."""
    os.chmod(directory, 0o500)
    if not _accepts_new_files(directory):
        try:
            yield
        finally:
            os.chmod(directory, 0o700)
        return
    os.chmod(directory, 0o700)
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("running as root, whom mode 0500 does not stop, and `chattr +i` is not "
                    "available on this file system")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def writes_off_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == LOGGER and "writes are off" in record.getMessage()]


def test_a_read_only_directory_serves_reads(
        make_backend: BackendFactory, l3_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = make_backend()
    for index in range(2):
        first.put(KEYS[index], payload(index))
    page_path(l3_dir, 1).write_bytes(b"rot")
    with read_only(l3_dir):
        backend = make_backend()
        assert backend.get(KEYS[0]) == payload(0)
        assert not backend.put(KEYS[2], payload(2))
        assert not backend.put(KEYS[3], payload(3))
        assert backend.put(KEYS[0], payload(0))  # already held: nothing to write
        assert backend.get(KEYS[1]) is None  # cannot be deleted here, but is forgotten
        assert backend.contains_prefix(KEYS[:2]) == 1
        assert backend.get(KEYS[0]) == payload(0)
    assert len(writes_off_warnings(caplog)) == 1
    assert backend.stats.write_failures == 1 and backend.stats.corrupt_removed == 1
    assert sorted(os.listdir(l3_dir)) == sorted(KEYS[i].hex() for i in (0, 1))


@pytest.mark.parametrize("blocked", ["under-a-file", "is-a-file"])
def test_a_directory_that_cannot_be_had(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, blocked: str) -> None:
    regular_file = tmp_path / "regular"
    regular_file.write_text("x")
    directory = regular_file / "l3" if blocked == "under-a-file" else regular_file
    backend = FileStorageBackend(directory, ROOT, capacity_bytes=None)
    assert not backend.put(KEYS[0], payload(0))
    assert backend.get(KEYS[0]) is None
    assert backend.contains_prefix(KEYS[:1]) == 0
    assert backend.usage() == StorageUsage(bytes_used=0, capacity_bytes=0, num_files=0)
    assert len(writes_off_warnings(caplog)) == 1
    assert regular_file.read_text() == "x"


def _raise(code: int) -> object:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))
    return fail


@pytest.mark.parametrize("call", ["write", "replace"])
def test_a_full_disk_turns_writes_off(
        make_backend: BackendFactory, l3_dir: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    backend = make_backend()
    backend.put(KEYS[0], payload(0))
    monkeypatch.setattr(os, call, _raise(errno.ENOSPC))
    assert not backend.put(KEYS[1], payload(1))
    monkeypatch.undo()
    assert not backend.put(KEYS[2], payload(2))  # off for good, without trying again
    assert backend.get(KEYS[0]) == payload(0)
    assert os.listdir(l3_dir) == [KEYS[0].hex()]  # no temp file left behind
    assert backend.stats.write_failures == 1
    assert writes_off_warnings(caplog) == [
        f"L3 storage {l3_dir}: writes are off, reads go on: the disk is full "
        f"({os.strerror(errno.ENOSPC)})"]


def test_a_passing_write_error_keeps_writes_on(
        make_backend: BackendFactory, l3_dir: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = make_backend()
    monkeypatch.setattr(os, "write", _raise(errno.EIO))
    assert not backend.put(KEYS[0], payload(0))
    monkeypatch.undo()
    assert backend.put(KEYS[0], payload(0)) and backend.get(KEYS[0]) == payload(0)
    assert backend.stats.write_failures == 1
    assert not writes_off_warnings(caplog)
    assert any("a page write failed" in record.getMessage() for record in caplog.records)
    assert os.listdir(l3_dir) == [KEYS[0].hex()]


def test_threads_share_one_backend(make_backend: BackendFactory, l3_dir: Path) -> None:
    capacity = 8 * PAGE_FILE_BYTES
    backend = make_backend(capacity_bytes=capacity)
    wrong: list[int] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            index, action = rng.randrange(16), rng.random()
            if action < 0.5:
                backend.put(KEYS[index], payload(index))
            elif action < 0.9:
                if backend.get(KEYS[index]) not in (None, payload(index)):
                    wrong.append(index)
            else:
                backend.delete(KEYS[index])

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong
    held = [KEYS[i].hex() for i in range(16) if backend.contains_prefix([KEYS[i]])]
    assert sorted(os.listdir(l3_dir)) == sorted(held)  # the index is the directory
    usage = backend.usage()
    assert usage.bytes_used == len(held) * PAGE_FILE_BYTES <= capacity
    assert backend.stats.corrupt_removed == 0 and backend.stats.evicted > 0
