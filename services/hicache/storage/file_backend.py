"""L3 as one file per page in a local directory (`--hicache-storage-backend file`).

A page lives in `<directory>/<key hex>` (see `page_file` for its header), created 0600 in a 0700
directory. A write goes to a temp file in the same directory and is renamed over the final name,
so a reader sees a whole file or none; a crash can leave a temp file, which a later start
removes, or (without fsync) a torn file, which fails its check and reads as a miss.

Each backend keeps an in-memory index of the pages, rebuilt from the directory at start (oldest
modification first); each hit stamps the file's mtime, so the order a restart rebuilds is the
order pages were last used in.

Backends may share a directory (a mesh's data-parallel replicas' hicache services do): a page
is named by its content's key, so two writers of a page write the same bytes and the rename
makes the last whole one win; a reader's open file outlives a rename or unlink elsewhere. A
page another backend wrote since this one started joins the index when `contains_prefix` or
`get` first asks for it (one `stat` at the first key the index lacks); one it removed is a miss
here, dropped from the index by the read that finds it gone. Only a backend alone on the
directory clears temp files at start (`page_directory.py`): never another's write in flight.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

from radixmesh.services.hicache.storage.base import (
    PageListener,
    StorageBackend,
    StorageStats,
    StorageUsage,
    StoredPage,
)
from radixmesh.services.hicache.storage.lru_index import LruIndex
from radixmesh.services.hicache.storage.page_directory import (
    TEMP_PREFIX,
    file_size,
    free_space_allowance,
    lock_directory,
    scan_pages,
)
from radixmesh.services.hicache.storage.page_file import (
    HEADER_BYTES,
    CorruptPageError,
    read_page_file,
    read_page_for_peer,
    read_page_header,
    write_page_file,
)
from radixmesh.shared.page_keys import check_key, key_hex

logger = logging.getLogger(__name__)
Read = TypeVar("Read")

# Errors that will not go away by retrying: each turns writes off for good (reads go on).
_WRITES_OFF_ERRNOS = {
    errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "the directory is not writable", errno.EPERM: "the directory is not writable",
    errno.EROFS: "the file system is read-only",
}


class FileStorageBackend(StorageBackend):
    """See the module docstring. `capacity_bytes` None: the disk's free space at start less 10%
    (plus what the directory already holds, so a restart does not shrink the cap)."""

    def __init__(self, directory: str | Path, namespace_root: bytes,
                 capacity_bytes: int | None = None, fsync: bool = False,
                 listener: PageListener | None = None) -> None:
        check_key(namespace_root, "namespace_root")
        self._listener = listener
        self.directory = Path(directory)
        self._root = namespace_root
        self._fsync = fsync  # off by default: a page lost in a crash is a miss, never wrong data
        self._lock = threading.Lock()
        self._index = LruIndex()
        self._stats = StorageStats()
        self._writes_off_reason: str | None = None
        self._reserved = 0  # bytes of puts in flight, already counted against the cap
        self._unlock: Callable[[], object] | None = None
        opened = self._open_directory()
        if opened:
            alone, fd = lock_directory(self.directory)
            if fd is not None:  # held until close, or until this backend is collected
                self._unlock = weakref.finalize(self, os.close, fd)
            for key, size in scan_pages(self.directory, clear_temps=alone):
                self._index.add(key, size)
        if capacity_bytes is None:
            capacity_bytes = self._default_capacity() if opened else 0
        self._capacity = capacity_bytes
        self._make_room(0)  # the cap may be lower than when these files were written

    def get(self, key: bytes) -> bytes | None:
        return self._read(key, read_page_file)

    def close(self) -> None:
        if self._unlock is not None:
            self._unlock()

    def get_for_peer(self, key: bytes) -> StoredPage | None:
        # The header's checksum as written: the receiving node hashes the bytes, not this one.
        found = self._read(key, read_page_for_peer)
        return None if found is None else StoredPage(*found)

    def _read(self, key: bytes, read: Callable[[Path, bytes, bytes], Read]) -> Read | None:
        check_key(key)
        with self._lock:
            held = key in self._index
        if not held and not self._adopt(key):
            with self._lock:
                self._stats = self._stats.plus(misses=1)
            return None
        path = self._path(key)
        try:
            payload = read(path, key, self._root)
        except CorruptPageError as corrupt:
            self._drop_corrupt(key, corrupt.inode)
            return None
        except OSError:
            self._drop_if_gone(key)
            return None
        with self._lock:
            self._index.touch(key)
            self._stats = self._stats.plus(hits=1)
        self._stamp(path)
        return payload

    def put(self, key: bytes, data: bytes | memoryview) -> bool:
        check_key(key)
        size = HEADER_BYTES + memoryview(data).nbytes
        with self._lock:
            if self._index.touch(key):
                return True
            if self._writes_off_reason is not None or not self._make_room(size):
                return False
            self._reserved += size
        try:
            temp = write_page_file(self.directory, f"{TEMP_PREFIX}{key_hex(key)}-", key,
                                   self._root, data, self._fsync)
        except OSError as error:
            with self._lock:
                self._reserved -= size
                self._write_failed(error)
            return False
        with self._lock:
            self._reserved -= size
            # Renamed under the lock, so "file present" and "key indexed" change together.
            try:
                os.replace(temp, self._path(key))
            except OSError as error:
                with suppress(OSError):
                    os.unlink(temp)
                self._write_failed(error)
                return False
            self._index.add(key, size)
            if self._listener is not None:
                self._listener.held((key,))
        self._stamp(self._path(key))
        return True

    def contains_prefix(self, keys: Sequence[bytes]) -> int:
        count = 0
        for key in keys:
            with self._lock:
                held = key in self._index
            if not held and not self._adopt(key):
                break
            count += 1
        return count

    def keys(self) -> list[bytes]:
        with self._lock:
            return self._index.keys()

    def delete(self, key: bytes) -> bool:
        check_key(key)
        with self._lock:
            if key not in self._index:
                return False
            self._remove(key)
            return True

    def clear(self) -> int:
        with self._lock:
            keys = self._index.keys()
        removed = 0
        # Headers are read outside the lock: a clear of many pages must not stall the puts and
        # gets of a serving mesh. A header that does not parse names no namespace: it goes too.
        for key in keys:
            header = read_page_header(self._path(key))
            if header is not None and header.namespace_root != self._root:
                continue
            with self._lock:
                if key in self._index:
                    self._remove(key)
                    removed += 1
        return removed

    def usage(self) -> StorageUsage:
        with self._lock:
            return StorageUsage(self._index.bytes_used, self._capacity, len(self._index))

    @property
    def stats(self) -> StorageStats:
        return self._stats

    @property
    def writable(self) -> bool:
        return self._writes_off_reason is None

    def _path(self, key: bytes) -> Path:
        return self.directory / key_hex(key)

    def _open_directory(self) -> bool:
        """Creates the directory if needed; False (writes off) where it cannot be had."""
        try:
            self.directory.mkdir(mode=0o700, parents=True)
            os.chmod(self.directory, 0o700)  # mkdir's mode passes through the umask
        except FileExistsError:
            if self.directory.is_dir():
                return True
            self._turn_writes_off(f"{self.directory} is not a directory")
            return False
        except OSError as error:
            self._turn_writes_off(f"the directory cannot be created ({error.strerror})")
            return False
        return True

    def _default_capacity(self) -> int:
        return self._index.bytes_used + free_space_allowance(self.directory)

    def _adopt(self, key: bytes) -> bool:
        """Whether `key`'s page, not in the index, is on disk all the same (another backend on
        this directory wrote it); if so it joins the index as just used. Its bytes are checked
        when read, as every page's are."""
        size = file_size(self._path(key), at_least=HEADER_BYTES)
        if size is None:
            return False
        with self._lock:
            if key not in self._index:
                self._index.add(key, size)
                if self._listener is not None:
                    self._listener.held((key,))
                self._make_room(0)  # the cap counts adopted pages as this backend's own
        return True

    def _drop_corrupt(self, key: bytes, inode: int) -> None:
        with self._lock:
            self._stats = self._stats.plus(misses=1)
            try:
                replaced = os.stat(self._path(key)).st_ino != inode
            except FileNotFoundError:
                replaced = False
            if not replaced and key in self._index:
                self._remove(key)
                self._stats = self._stats.plus(corrupt_removed=1)

    def _drop_if_gone(self, key: bytes) -> None:
        """After a failed read: forget the page only if its file is really gone (not EIO)."""
        with self._lock:
            self._stats = self._stats.plus(misses=1)
            if not self._path(key).exists() and self._index.remove(key):
                self._removed(key)

    def _make_room(self, size: int) -> bool:
        """Evicts least recently used pages until `size` more bytes fit; False if they never can."""
        if size > self._capacity:
            return False
        while self._index.bytes_used + self._reserved + size > self._capacity:
            victim = self._index.oldest()
            if victim is None:
                return False  # what is left of the cap is held by puts in flight
            self._remove(victim)
            self._stats = self._stats.plus(evicted=1)
        return True

    def _remove(self, key: bytes) -> None:
        self._index.remove(key)
        with suppress(OSError):  # already gone, or a read-only directory: forgotten either way
            os.unlink(self._path(key))
        self._removed(key)

    def _removed(self, key: bytes) -> None:
        if self._listener is not None:
            self._listener.gone((key,))

    def _write_failed(self, error: OSError) -> None:
        self._stats = self._stats.plus(write_failures=1)
        reason = _WRITES_OFF_ERRNOS.get(error.errno or 0)
        if reason is None:
            logger.warning("L3 storage %s: a page write failed: %s", self.directory, error)
        else:
            self._turn_writes_off(f"{reason} ({error.strerror})")

    def _turn_writes_off(self, reason: str) -> None:
        if self._writes_off_reason is None:
            self._writes_off_reason = reason
            logger.warning("L3 storage %s: writes are off, reads go on: %s",
                           self.directory, reason)

    @staticmethod
    def _stamp(path: Path) -> None:
        # Explicit nanoseconds: the kernel's own timestamps are coarse enough to tie.
        now = time.time_ns()
        with suppress(OSError):
            os.utime(path, ns=(now, now))
