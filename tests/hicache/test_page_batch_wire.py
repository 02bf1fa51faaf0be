"""ReadPages' hand-written PageBatch encoding is protobuf's own, byte for byte: the .proto
file stays the one definition of the message."""

from __future__ import annotations

import os

import pytest

from radixmesh.services.hicache.page_batch_wire import encode_page_batch
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
