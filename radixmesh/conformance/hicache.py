"""The HiCache contract (protos/hicache.proto `HiCache`): what a replacement must do.

The suite plays a scheduler: it attaches with a small layout of its own and a random
namespace, so it touches no other namespace's L3 pages. Attaching replaces the host pool, so
run it against a hicache service that no mesh is using.
"""

from __future__ import annotations

import os

import grpc

from radixmesh.conformance.runner import Target, expect
from radixmesh.shared.mesh_protocol import Hello
from radixmesh.shared.protos_gen import common_pb2, hicache_pb2, hicache_pb2_grpc

CALLER = Hello("scheduler", implementation="conformance")
KEY_BYTES = 32  # shared/page_keys.py: a page key is a 32-byte hash
LAYOUT = hicache_pb2.KVLayout(num_layers=2, page_size=4, num_kv_heads=2, head_dim=8,
                              dtype="float32")


def _stub(target: Target) -> hicache_pb2_grpc.HiCacheStub:
    return hicache_pb2_grpc.HiCacheStub(target.channel)


def _keys(count: int) -> list[bytes]:
    """Keys no one stored: random, so a rerun never meets an earlier run's pages."""
    return [os.urandom(KEY_BYTES) for _ in range(count)]


async def _attach(target: Target) -> hicache_pb2.AttachReply:
    return await _stub(target).Attach(hicache_pb2.AttachRequest(
        layout=LAYOUT, num_device_pages=4, namespace_root=os.urandom(KEY_BYTES)),
        timeout=target.timeout)


async def _lookup(target: Target, keys: list[bytes]) -> int:
    reply = await _stub(target).Lookup(hicache_pb2.LookupRequest(keys=keys),
                                       timeout=target.timeout)
    return reply.num_pages


async def _refused(call: object, code: grpc.StatusCode, what: str) -> None:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        expect(error.code() is code, f"{what} refused with {error.code().name}, not "
               f"{code.name}: {error.details()}")
    else:
        expect(False, f"{what} was accepted")


async def check_attach(target: Target) -> None:
    """Attach with a KV layout and a 32-byte namespace root answers a pool name, at least one
    slot (slot ids run 1..num_slots) and a non-empty epoch."""
    reply = await _attach(target)
    expect(bool(reply.pool_name), "Attach answers no pool_name")
    expect(reply.num_slots > 0, f"Attach grants {reply.num_slots} slots")
    expect(bool(reply.epoch), "Attach answers no epoch")


async def check_lookup_unknown(target: Target) -> None:
    """Lookup of a chain of keys nobody stored answers 0 pages."""
    await _attach(target)
    pages = await _lookup(target, _keys(3))
    expect(pages == 0, f"Lookup of unknown keys answers {pages} pages")


async def check_bad_key_refused(target: Target) -> None:
    """A key that is not 32 bytes is refused with INVALID_ARGUMENT."""
    await _refused(_stub(target).Lookup(hicache_pb2.LookupRequest(keys=[b"short"]),
                                        timeout=target.timeout),
                   grpc.StatusCode.INVALID_ARGUMENT, "Lookup of a 5-byte key")


async def check_prefetch_unknown(target: Target) -> None:
    """Prefetch of keys nobody stored, into granted slots, answers 0 pages."""
    reply = await _attach(target)
    transfer = hicache_pb2.PageTransfer(epoch=reply.epoch, keys=_keys(1), slots=[1])
    moved = await _stub(target).Prefetch(transfer, timeout=target.timeout)
    expect(moved.num_pages == 0, f"Prefetch of an unknown key answers {moved.num_pages} pages")


async def check_stale_epoch_refused(target: Target) -> None:
    """A transfer naming an epoch other than the current attachment's is refused with
    FAILED_PRECONDITION: its slots belong to a pool this service no longer has."""
    await _attach(target)
    transfer = hicache_pb2.PageTransfer(epoch="conformance-stale", keys=_keys(1), slots=[1])
    await _refused(_stub(target).Prefetch(transfer, timeout=target.timeout),
                   grpc.StatusCode.FAILED_PRECONDITION, "Prefetch with a stale epoch")


async def check_store_lookup_clear(target: Target) -> None:
    """With storage (Attach's `storage`), Store writes the slots' pages, Lookup then finds
    them as a leading run of the chain, and Clear drops them (Lookup answers 0 again).
    Without storage, Store writes nothing and Clear still succeeds."""
    reply = await _attach(target)
    expect(reply.num_slots >= 2, f"Attach grants {reply.num_slots} slots; the check needs 2")
    keys = _keys(3)
    stored = await _stub(target).Store(
        hicache_pb2.PageTransfer(epoch=reply.epoch, keys=keys[:2], slots=[1, 2]),
        timeout=target.timeout)
    if reply.storage:
        expect(stored.num_pages == 2, f"Store of 2 pages wrote {stored.num_pages}")
        found = await _lookup(target, keys)
        expect(found == 2, f"Lookup after storing 2 of 3 keys answers {found}")
    else:
        expect(stored.num_pages == 0, f"Store without storage wrote {stored.num_pages}")
    await _stub(target).Clear(common_pb2.Empty(), timeout=target.timeout)
    found = await _lookup(target, keys)
    expect(found == 0, f"Lookup after Clear answers {found}")


CHECKS = (check_attach, check_lookup_unknown, check_bad_key_refused, check_prefetch_unknown,
          check_stale_epoch_refused, check_store_lookup_clear)
