"""One L3 page as a file: a fixed header that names and checks the payload after it.

Layout (little-endian): magic (8 bytes), format version (u16), page key (32), namespace root
(32), payload length (u64), XXH3-128 of the payload (16), then the payload. The key and root let
a reader tell a renamed or foreign file from its own; the length and checksum catch truncation
and rot. The checksum is computed once, when the page is written, and travels with the page
when another node fetches it (`read_page_for_peer`), which checks it on its side
(`page_checksum.py` says why XXH3). Files of format 1 (SHA-256) read as corrupt: misses.
"""

from __future__ import annotations

import os
import struct
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from radixmesh.services.hicache.page_checksum import CHECKSUM_BYTES, page_checksum

MAGIC = b"RMKVPAGE"
FORMAT_VERSION = 2
_HEADER = struct.Struct(f"<8sH32s32sQ{CHECKSUM_BYTES}s")
HEADER_BYTES = _HEADER.size


@dataclass(frozen=True, slots=True)
class PageHeader:
    """What a page file says about itself; `unpack` only parses, `names`/`checks` verify."""

    key: bytes
    namespace_root: bytes
    payload_len: int
    checksum: bytes

    @classmethod
    def for_payload(cls, key: bytes, namespace_root: bytes,
                    payload: bytes | memoryview) -> PageHeader:
        view = memoryview(payload)
        return cls(key, namespace_root, view.nbytes, page_checksum(view))

    @classmethod
    def unpack(cls, raw: bytes) -> PageHeader | None:
        """The header at the start of `raw`; None for a short read, bad magic or other version."""
        if len(raw) < HEADER_BYTES:
            return None
        magic, version, key, root, length, checksum = _HEADER.unpack_from(raw)
        if magic != MAGIC or version != FORMAT_VERSION:
            return None
        return cls(key, root, length, checksum)

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, FORMAT_VERSION, self.key, self.namespace_root,
                            self.payload_len, self.checksum)

    def names(self, key: bytes, namespace_root: bytes) -> bool:
        """Whether this is the page of `key` in `namespace_root` (not a renamed or foreign file)."""
        return self.key == key and self.namespace_root == namespace_root

    def checks(self, payload: bytes) -> bool:
        """Whether `payload` is whole and intact."""
        return len(payload) == self.payload_len and page_checksum(payload) == self.checksum


class CorruptPageError(Exception):
    """A page file that failed its check; `inode` tells it from a file written after the read."""

    def __init__(self, path: Path, inode: int) -> None:
        super().__init__(f"{path} failed its check")
        self.inode = inode


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def write_page_file(directory: Path, temp_prefix: str, key: bytes, namespace_root: bytes,
                    payload: bytes | memoryview, fsync: bool) -> Path:
    """Writes a whole page file (mode 0600) under a fresh temp name in `directory` and returns
    that name, for the caller to rename into place. On OSError nothing is left behind."""
    fd, name = tempfile.mkstemp(prefix=temp_prefix, dir=directory)
    try:
        try:
            _write_all(fd, PageHeader.for_payload(key, namespace_root, payload).pack())
            _write_all(fd, payload)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        with suppress(OSError):
            os.unlink(name)
        raise
    return Path(name)


def read_page_header(path: Path) -> PageHeader | None:
    """What the file at `path` says it holds; None when it is unreadable or not a page file."""
    try:
        with open(path, "rb") as file:
            return PageHeader.unpack(file.read(HEADER_BYTES))
    except OSError:
        return None


def read_page_file(path: Path, key: bytes, namespace_root: bytes) -> bytes:
    """The payload of `key`'s page file. Raises CorruptPageError when the file fails its check,
    OSError when it cannot be read."""
    header, payload, inode = _read_named(path, key, namespace_root)
    if not header.checks(payload):
        raise CorruptPageError(path, inode)
    return payload


def read_page_for_peer(path: Path, key: bytes, namespace_root: bytes) -> tuple[bytes, bytes]:
    """`key`'s payload and the checksum stored with it, the payload not hashed here: the node
    it goes to checks it (so a page is hashed once per hop, on the receiving side). The file's
    key, namespace and length are checked; CorruptPageError / OSError as `read_page_file`."""
    header, payload, inode = _read_named(path, key, namespace_root)
    if len(payload) != header.payload_len:
        raise CorruptPageError(path, inode)
    return payload, header.checksum


def _read_named(path: Path, key: bytes, namespace_root: bytes) -> tuple[PageHeader, bytes, int]:
    with open(path, "rb") as file:
        status = os.fstat(file.fileno())
        header = PageHeader.unpack(file.read(HEADER_BYTES))
        # The size check comes before the read: a corrupt length must not size a buffer.
        if (header is None or not header.names(key, namespace_root)
                or status.st_size != HEADER_BYTES + header.payload_len):
            raise CorruptPageError(path, status.st_ino)
        return header, file.read(header.payload_len), status.st_ino
