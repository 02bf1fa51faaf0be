"""What a mesh left in its L3 directory, and the damage `test_mesh_tiers.py` does to it (see
`services/hicache/storage/page_file.py` for the file format)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from radixmesh.services.hicache.storage.file_backend import TEMP_PREFIX
from radixmesh.services.hicache.storage.page_file import (
    HEADER_BYTES,
    CorruptPageError,
    PageHeader,
    read_page_file,
    read_page_header,
    write_page_file,
)
from radixmesh.shared.page_keys import KeyNamespace, key_from_hex, page_keys

# Another model's pages: a namespace that shares the directory, never a key.
FOREIGN_ROOT = KeyNamespace(model_id="another-model", weights_fingerprint="ff",
                            kv_dtype="float32", page_size=4, tp_layout="tp1").root()


def page_files(directory: Path) -> dict[bytes, Path]:
    """Every file named by a page key (temp files of unfinished writes are not pages)."""
    found = {}
    for path in directory.iterdir():
        key = key_from_hex(path.name)
        if key is not None:
            found[key] = path
    return found


def temp_files(directory: Path) -> list[Path]:
    return [path for path in directory.iterdir() if path.name.startswith(TEMP_PREFIX)]


def namespace_root(directory: Path) -> bytes:
    """The namespace the mesh's pages name (one model: one root for all of them)."""
    roots = {header.namespace_root for path in page_files(directory).values()
             if (header := read_page_header(path)) is not None} - {FOREIGN_ROOT}
    assert len(roots) == 1, f"expected the pages of one namespace, found {len(roots)}"
    return roots.pop()


def bad_files(directory: Path, root: bytes) -> list[Path]:
    """Files of `root`'s namespace (or no namespace) that would fail a read: none should stay."""
    bad = []
    for key, path in page_files(directory).items():
        header = read_page_header(path)
        if header is not None and header.namespace_root == FOREIGN_ROOT:
            continue  # another namespace's: not ours to judge
        try:
            read_page_file(path, key, root)
        except CorruptPageError:
            bad.append(path)
    return bad


@dataclass(frozen=True)
class Damage:
    """The files damaged, one per kind, and a page of another namespace left beside them."""

    damaged: dict[str, Path]
    foreign: Path


def damage(directory: Path, conversations: Sequence[Sequence[int]], page_size: int,
           page: int = 3) -> Damage:
    """Damages page `page` of each of four conversations (their token sequences), one way each:
    a flipped payload byte, a truncated payload, another page's file under this key's name, and
    this page's bytes under a foreign namespace's header. Early pages, so that the first round
    after a restart prefetches them and so reads them."""
    root = namespace_root(directory)
    keys = [page_keys(root, tokens, page_size) for tokens in conversations[:4]]
    paths = [directory / keys[i][page].hex() for i in range(4)]
    with open(paths[0], "r+b") as file:
        file.seek(HEADER_BYTES + 5)
        byte = file.read(1)
        file.seek(HEADER_BYTES + 5)
        file.write(bytes([byte[0] ^ 0xFF]))
    os.truncate(paths[1], HEADER_BYTES + (paths[1].stat().st_size - HEADER_BYTES) // 2)
    paths[2].write_bytes((directory / keys[2][page + 1].hex()).read_bytes())
    raw = paths[3].read_bytes()
    header = PageHeader.unpack(raw)
    assert header is not None
    paths[3].write_bytes(PageHeader(header.key, FOREIGN_ROOT, header.payload_len,
                                    header.checksum).pack() + raw[HEADER_BYTES:])
    foreign = write_foreign_page(directory, raw[HEADER_BYTES:])
    kinds = ("flipped byte", "truncated", "renamed copy", "foreign header")
    return Damage(dict(zip(kinds, paths, strict=True)), foreign)


def write_foreign_page(directory: Path, payload: bytes) -> Path:
    """A whole, valid page of FOREIGN_ROOT's namespace under its own key."""
    key = page_keys(FOREIGN_ROOT, range(4), 4)[0]
    temp = write_page_file(directory, TEMP_PREFIX, key, FOREIGN_ROOT, payload, fsync=False)
    path = directory / key.hex()
    with suppress(FileNotFoundError):
        path.unlink()
    temp.rename(path)
    return path
