"""Page fetch between two real hicache services on loopback (FetchRemote on B, which streams
ReadPages from A): the bytes arrive exactly, in order; a page whose bytes fail their checksum
is rejected and the fetch stops before it; a peer of another namespace refuses; a dead peer
and a peer that never answers end the fetch by its deadline with what came, never an error."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.services.hicache.server import warn_if_pages_open
from radixmesh.shared.host_pool import HostPool
from radixmesh.shared.protos_gen import hicache_pb2, hicache_pb2_grpc
from tests.hicache.mesh_runs import samples
from tests.hicache.slots import CHAIN, LAYOUT, OTHER_ROOT, slot_payload
from tests.hicache.test_server import attach_request, free_port, running, scrape, transfer

NUM_PAGES = 6


@dataclass
class Node:
    stub: hicache_pb2_grpc.HiCacheStub
    address: str
    epoch: str
    pool: HostPool
    l3_dir: Path
    metrics_port: int


@asynccontextmanager
async def node(root: Path) -> AsyncIterator[Node]:
    metrics_port = free_port()
    config = HiCacheConfig(port=free_port(), metrics_port=metrics_port,
                           hicache_storage_backend="file", hicache_storage_dir=str(root),
                           hicache_storage_size=0.01)
    async with running(config) as stub:
        reply = await stub.Attach(attach_request())
        layout = LAYOUT.host_pool_layout(reply.num_slots + 1)
        with HostPool.attach(reply.pool_name, layout) as pool:
            yield Node(stub, f"127.0.0.1:{config.port}", reply.epoch, pool, root, metrics_port)


async def store_chain(a: Node) -> None:
    """A holds the first NUM_PAGES pages of CHAIN in L3 (the worker's backup, then a Store)."""
    for index in range(NUM_PAGES):
        a.pool.write_slot(index + 1, slot_payload(index))
    stored = await a.stub.Store(transfer(a.epoch, 0, list(range(1, NUM_PAGES + 1))))
    assert stored.num_pages == NUM_PAGES


def fetch(b: Node, address: str, num_pages: int = NUM_PAGES,
          deadline_s: float = 10.0) -> hicache_pb2.RemoteFetch:
    return hicache_pb2.RemoteFetch(epoch=b.epoch, keys=CHAIN[:num_pages],
                                   slots=list(range(1, num_pages + 1)), address=address,
                                   deadline_s=deadline_s)


def corrupt_payload(a: Node, index: int) -> None:
    """Flips a byte of page `index`'s bytes in A's L3 file, its header left whole: A serves it
    with the checksum it was stored with, and only the receiving side can tell."""
    path = a.l3_dir / CHAIN[index].hex()
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_pages_move_between_nodes_checked(tmp_path: Path) -> None:
    async def scenario() -> dict[str, float]:
        async with node(tmp_path / "a") as a, node(tmp_path / "b") as b:
            await store_chain(a)
            reply = await b.stub.FetchRemote(fetch(b, a.address))
            assert reply.num_pages == NUM_PAGES
            for index in range(NUM_PAGES):
                assert bytes(b.pool.slot_bytes(index + 1)) == slot_payload(index)
            # Page 3's bytes rot on A: B takes pages 0-2 and rejects the rest.
            for slot in range(1, NUM_PAGES + 1):
                b.pool.write_slot(slot, bytes(len(slot_payload(0))))
            corrupt_payload(a, 3)
            assert (await b.stub.FetchRemote(fetch(b, a.address))).num_pages == 3
            assert bytes(b.pool.slot_bytes(3)) == slot_payload(2)
            assert bytes(b.pool.slot_bytes(4)) == bytes(len(slot_payload(0)))  # never written
            return samples(scrape(b.metrics_port))

    metrics = asyncio.run(scenario())
    assert metrics["radixmesh:hicache_fetched_tokens_total"] == (NUM_PAGES + 3) * LAYOUT.page_size
    assert metrics["radixmesh:hicache_fetch_rejected_pages_total"] == 1
    assert metrics["radixmesh:hicache_fetch_fallbacks_total"] == 1
    assert metrics["radixmesh:hicache_fetch_bandwidth_bytes_per_second"] > 0


def test_a_peer_of_another_namespace_refuses(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with node(tmp_path / "a") as a:
            await store_chain(a)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in a.stub.ReadPages(hicache_pb2.PageRead(
                        namespace_root=OTHER_ROOT, keys=CHAIN[:2])):
                    pass
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "namespace" in (caught.value.details() or "")
            pages = [page async for batch in a.stub.ReadPages(hicache_pb2.PageRead(
                namespace_root=attach_request().namespace_root, keys=CHAIN[:NUM_PAGES + 2]))
                for page in batch.pages]
            assert [page.key for page in pages] == CHAIN[:NUM_PAGES]

    asyncio.run(scenario())


def test_a_dead_or_stalled_peer_ends_the_fetch_by_its_deadline(tmp_path: Path) -> None:
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there

    async def scenario() -> list[float]:
        async with node(tmp_path / "b") as b:
            took = []
            for address in (dead, f"127.0.0.1:{silent.getsockname()[1]}"):
                started = time.monotonic()
                reply = await b.stub.FetchRemote(fetch(b, address, deadline_s=1.0), timeout=30)
                took.append(time.monotonic() - started)
                assert reply.num_pages == 0
            return took

    try:
        took = asyncio.run(scenario())
    finally:
        silent.close()
    assert max(took) < 5.0, took  # bounded by the 1 s deadline, not by gRPC's own timeouts


def test_bad_fetches_are_refused_by_name(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with node(tmp_path / "b") as b:
            cases = [(fetch(b, "127.0.0.1:1", deadline_s=0.0), grpc.StatusCode.INVALID_ARGUMENT,
                      "deadline_s"),
                     (fetch(b, ""), grpc.StatusCode.INVALID_ARGUMENT, "address"),
                     (hicache_pb2.RemoteFetch(epoch="stale", keys=CHAIN[:1], slots=[1],
                                              address="127.0.0.1:1", deadline_s=1.0),
                      grpc.StatusCode.FAILED_PRECONDITION, "epoch"),
                     (hicache_pb2.RemoteFetch(epoch=b.epoch, keys=CHAIN[:1], slots=[99],
                                              address="127.0.0.1:1", deadline_s=1.0),
                      grpc.StatusCode.INVALID_ARGUMENT, "slots[0]")]
            for request, code, words in cases:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await b.stub.FetchRemote(request)
                assert caught.value.code() == code
                assert words in (caught.value.details() or "")

    asyncio.run(scenario())


def test_open_pages_warn_unless_loopback_or_mutual_tls() -> None:
    assert warn_if_pages_open(HiCacheConfig(host="0.0.0.0"))
    assert not warn_if_pages_open(HiCacheConfig(host="127.0.0.1"))
