"""A PageBatch (protos/hicache.proto) as the bytes ReadPages carries, written and read here.

Built through protobuf, each page's MiBs are copied into the message and again into its
serialized form, which held the sending node to ~2 GB/s a core, below the links it serves;
parsed through protobuf, they are copied out of the message once more before any check.
Written here, the pages are joined once; read here, each page's bytes are a view of the
received message. The layout is protobuf's wire format for the message as declared; tests keep
it equal to `PageBatch.SerializeToString()` and readable by `PageBatch.FromString()`, and the
reader takes any valid encoding (fields in any order, unknown fields skipped), so the .proto
file stays the one definition.
"""

from __future__ import annotations

from collections.abc import Iterable

from radixmesh.services.hicache.peer_pages import ReceivedPage

LENGTH_DELIMITED, VARINT, FIXED64, FIXED32 = 2, 0, 1, 5  # wire types this reader can skip
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


class MalformedBatchError(ValueError):
    """The bytes are not a PageBatch (a peer's bug, or a cut message)."""


def decode_page_batch(raw: bytes) -> list[ReceivedPage]:
    """The pages of a serialized PageBatch, each field a view of `raw` (no page copied)."""
    view = memoryview(raw)
    return [_page(body) for tag, body in _fields(view) if tag == PAGES]


def _page(body: memoryview) -> ReceivedPage:
    found = {KEY: b"", DATA: b"", CHECKSUM: b""}
    for tag, value in _fields(body):
        if tag in found:
            found[tag] = value
    return ReceivedPage(bytes(found[KEY]), found[DATA], bytes(found[CHECKSUM]))


def _fields(view: memoryview) -> Iterable[tuple[int, memoryview]]:
    """(tag, value) of each length-delimited field; fields of other wire types are skipped."""
    at, end = 0, len(view)
    while at < end:
        tag, at = _varint(view, at)
        wire_type = tag & 7
        if wire_type == LENGTH_DELIMITED:
            length, at = _varint(view, at)
            if at + length > end:
                raise MalformedBatchError("a field runs past the message's end")
            yield tag, view[at:at + length]
            at += length
        elif wire_type == VARINT:
            _, at = _varint(view, at)
        elif wire_type in (FIXED64, FIXED32):
            at += 8 if wire_type == FIXED64 else 4
        else:
            raise MalformedBatchError(f"wire type {wire_type} in a PageBatch")
    if at > end:
        raise MalformedBatchError("the last field runs past the message's end")


def _varint(view: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(view) or shift > 63:
            raise MalformedBatchError("a varint is cut or too long")
        byte = view[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
