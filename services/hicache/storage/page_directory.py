"""The file backend's directory on disk: the pages it holds, and who else uses it.

Backends may share a directory (the hicache services of a mesh's data-parallel replicas do).
A start clears temp files (writes that never finished), but where another backend is open on
the directory a temp file may be its write in flight: each open backend holds a shared `flock`
on the directory, and only one that found no other holder may clear them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
from contextlib import suppress
from pathlib import Path

from radixmesh.shared.page_keys import key_from_hex

TEMP_PREFIX = ".tmp-"
# Design §4: without a cap, L3 may fill what the disk has free at start, less 10%.
FREE_SPACE_SHARE = 0.9


def lock_directory(directory: Path) -> tuple[bool, int | None]:
    """Takes a shared lock on `directory`; returns (alone, the descriptor that holds it).

    Closing the descriptor releases the lock (the caller does, once done with the directory).
    `alone`: no other holder had it (a short exclusive lock tells), so its temp files are
    writes that died. False also where that cannot be known (no flock on this file system;
    the directory unreadable, descriptor None): temp files then stay, costing disk, not data.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        alone = True
    except OSError:  # BlockingIOError: another backend holds it
        alone = False
    with suppress(OSError):
        # Blocks only while another backend, starting, clears the temp files.
        fcntl.flock(fd, fcntl.LOCK_SH)
    return alone, fd


def scan_pages(directory: Path, clear_temps: bool) -> list[tuple[bytes, int]]:
    """(key, file size) of every file named by a page key, least recently modified first;
    temp files are removed on the way when `clear_temps`. Other files are left alone."""
    found: list[tuple[int, str, bytes, int]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                if clear_temps:
                    with suppress(OSError):
                        os.unlink(entry.path)
                continue
            key = key_from_hex(entry.name)
            if key is None or not entry.is_file(follow_symlinks=False):
                continue
            try:
                status = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # another backend on the directory evicted it meanwhile
                continue
            found.append((status.st_mtime_ns, entry.name, key, status.st_size))
    return [(key, size) for _, _, key, size in sorted(found)]


def file_size(path: Path, at_least: int) -> int | None:
    """The size of the regular file at `path`; None when there is none of `at_least` bytes."""
    try:
        status = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode) or status.st_size < at_least:
        return None
    return status.st_size


def free_space_allowance(directory: Path) -> int:
    """What L3 may add to `directory` without a cap: the disk's free space less 10%, read on
    the nearest existing folder at or above it (it may not be made yet)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return int(shutil.disk_usage(existing).free * FREE_SPACE_SHARE)


def default_capacity(directory: Path) -> int:
    """The uncapped file backend's cap on `directory`: the pages already there plus
    `free_space_allowance`."""
    held = sum(size for _, size in scan_pages(directory, clear_temps=False)) \
        if directory.is_dir() else 0
    return held + free_space_allowance(directory)
