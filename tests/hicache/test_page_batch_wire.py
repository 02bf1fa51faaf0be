"""ReadPages' hand-written PageBatch encoding is protobuf's own, byte for byte, and its reader
takes what protobuf writes (unknown fields too) and refuses cut messages: the .proto file stays
the one definition of the message."""

from __future__ import annotations

import os

import pytest

from radixmesh.services.hicache.page_batch_wire import (
    MalformedBatchError,
    decode_page_batch,
    encode_page_batch,
)
from radixmesh.shared.protos_gen import hicache_pb2

# Lengths around each varint boundary (1, 2 and 3 bytes), up to an 8B page of 2 MiB.
LENGTHS = (0, 1, 127, 128, 16383, 16384, 2 << 20)


def pages_of(lengths: tuple[int, ...]) -> list[tuple[bytes, bytes, bytes]]:
    return [(os.urandom(32), os.urandom(length), os.urandom(16)) for length in lengths]


@pytest.mark.parametrize("lengths", [(), *((length,) for length in LENGTHS), LENGTHS],
                         ids=lambda lengths: "+".join(map(str, lengths)) or "empty")
def test_the_encoding_is_protobufs(lengths: tuple[int, ...]) -> None:
    pages = pages_of(lengths)
    expected = hicache_pb2.PageBatch(pages=[
        hicache_pb2.PeerPage(key=key, data=data, checksum=checksum)
        for key, data, checksum in pages]).SerializeToString()
    encoded = encode_page_batch(pages)
    assert encoded == expected
    parsed = hicache_pb2.PageBatch.FromString(encoded)
    assert [(page.key, page.data, page.checksum) for page in parsed.pages] == pages

    decoded = decode_page_batch(encoded)
    assert [(page.key, bytes(page.data), page.checksum) for page in decoded] == pages


def test_the_reader_skips_fields_it_does_not_know() -> None:
    [(key, data, checksum)] = pages_of((300,))
    page = hicache_pb2.PeerPage(key=key, data=data, checksum=checksum).SerializeToString()
    unknown_varint, unknown_bytes = bytes([4 << 3 | 0, 0x96, 0x01]), bytes([5 << 3 | 2, 2, 7, 7])
    unknown_fixed = bytes([6 << 3 | 1]) + bytes(8) + bytes([7 << 3 | 5]) + bytes(4)
    inner = unknown_varint + page + unknown_bytes + unknown_fixed
    batch = unknown_bytes + bytes([1 << 3 | 2]) + _varint(len(inner)) + inner + unknown_varint
    [decoded] = decode_page_batch(batch)
    assert (decoded.key, bytes(decoded.data), decoded.checksum) == (key, data, checksum)


@pytest.mark.parametrize("cut", [1, 2, 40, -1])
def test_a_cut_message_is_refused(cut: int) -> None:
    encoded = encode_page_batch(pages_of((1000,)))
    with pytest.raises(MalformedBatchError):
        decode_page_batch(encoded[:cut])


def test_an_empty_message_holds_no_page() -> None:
    assert decode_page_batch(b"") == []


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])
