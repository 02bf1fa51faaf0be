"""A PageBatch (protos/hicache.proto) as the bytes ReadPages sends, written directly.

Built through protobuf, each page's MiBs are copied into the message and again into its
serialized form, which held the sending node to ~2 GB/s a core, below the links it serves
(the builder is the step that limited a fetch between two nodes). Written here, the pages are
joined once. The layout is protobuf's wire format for the message as declared; a test keeps it
equal to `PageBatch.SerializeToString()`, so the .proto file stays the one definition.
"""

from __future__ import annotations

from collections.abc import Iterable

# Tags of length-delimited fields: (field number << 3) | 2.
PAGES = 1 << 3 | 2     # PageBatch.pages
KEY = 1 << 3 | 2       # PeerPage.key
DATA = 2 << 3 | 2      # PeerPage.data
CHECKSUM = 3 << 3 | 2  # PeerPage.checksum


def encode_page_batch(pages: Iterable[tuple[bytes, bytes, bytes]]) -> bytes:
    """The serialized PageBatch of `pages`, each (key, data, checksum)."""
    parts: list[bytes] = []
    for key, data, checksum in pages:
        fields = [part for tag, value in ((KEY, key), (DATA, data), (CHECKSUM, checksum))
                  for part in _field(tag, value)]
        parts += [_head(PAGES, sum(map(len, fields))), *fields]
    return b"".join(parts)


def _field(tag: int, value: bytes) -> tuple[bytes, ...]:
    # proto3 leaves a field at its default (empty) out of the wire.
    return (_head(tag, len(value)), value) if value else ()


def _head(tag: int, length: int) -> bytes:
    """A length-delimited field's tag and length (a varint: 7 bits a byte, low first)."""
    head = bytearray([tag])
    while length >= 0x80:
        head.append(length & 0x7F | 0x80)
        length >>= 7
    head.append(length)
    return bytes(head)
