"""The HiCache service on a real gRPC server on loopback, its pool mapped by a second process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixmesh.services.hicache import server as hicache_server
from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.services.hicache.storage import FileStorageBackend
from radixmesh.shared.grpc_service import SERVING, wait_until_serving
from radixmesh.shared.host_pool import SHM_DIR, HostPool, HostPoolLayout
from radixmesh.shared.protos_gen import common_pb2, hicache_pb2, hicache_pb2_grpc
from tests.hicache.slots import CHAIN, LAYOUT, NAMESPACE_ROOT, slot_payload
from tests.mesh.conftest import free_port

# Maps the pool by name in a process of its own (as the worker does) and prints a slot's bytes.
READER = """
import json, sys
from radixmesh.shared.host_pool import HostPool, HostPoolLayout
name, layout, slot = sys.argv[1], HostPoolLayout(**json.loads(sys.argv[2])), int(sys.argv[3])
with HostPool.attach(name, layout) as pool, pool.slot_bytes(slot) as view:
    print(bytes(view).hex())
"""


def read_slot_elsewhere(name: str, layout: HostPoolLayout, slot: int, cwd: Path) -> bytes:
    # cwd away from the checkout: its top-level folders must not shadow installed packages.
    child = subprocess.run([sys.executable, "-c", READER, name, json.dumps(asdict(layout)),
                            str(slot)], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert child.returncode == 0, child.stderr
    return bytes.fromhex(child.stdout.strip())


@contextlib.asynccontextmanager
async def running(config: HiCacheConfig) -> AsyncIterator[hicache_pb2_grpc.HiCacheStub]:
    task = asyncio.create_task(hicache_server.serve(config))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{config.port}") as channel:
            await wait_until_serving(channel, 30.0)
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=hicache_server.SERVICE_NAME))
            assert health.status == SERVING
            yield hicache_pb2_grpc.HiCacheStub(channel)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def attach_request() -> hicache_pb2.AttachRequest:
    return hicache_pb2.AttachRequest(
        layout=hicache_pb2.KVLayout(**asdict(LAYOUT)), num_device_pages=4,
        namespace_root=NAMESPACE_ROOT)


def transfer(epoch: str, first: int, slots: list[int]) -> hicache_pb2.PageTransfer:
    return hicache_pb2.PageTransfer(epoch=epoch, keys=CHAIN[first:first + len(slots)],
                                    slots=slots)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def test_the_service_end_to_end(tmp_path: Path) -> None:
    metrics_port = free_port()
    config = HiCacheConfig(port=free_port(), metrics_port=metrics_port,
                           hicache_storage_backend="file",
                           hicache_storage_dir=str(tmp_path / "l3"), hicache_storage_size=0.01)

    async def scenario() -> tuple[str, str]:
        async with running(config) as stub:
            reply = await stub.Attach(attach_request())
            assert (reply.num_slots, reply.storage, len(reply.epoch)) == (8, True, 32)
            assert await stub.Attach(attach_request()) == reply
            layout = LAYOUT.host_pool_layout(reply.num_slots + 1)
            with HostPool.attach(reply.pool_name, layout) as pool:  # the worker's backup
                pool.write_slot(1, slot_payload(0))
                pool.write_slot(2, slot_payload(1))
            assert (await stub.Store(transfer(reply.epoch, 0, [1, 2]))).num_pages == 2
            lookup = await stub.Lookup(hicache_pb2.LookupRequest(keys=CHAIN[:3]))
            assert lookup.num_pages == 2
            assert (await stub.Prefetch(transfer(reply.epoch, 0, [6, 8]))).num_pages == 2
            assert read_slot_elsewhere(reply.pool_name, layout, 8, tmp_path) == slot_payload(1)
            await check_refusals(stub, reply.epoch)
            text = scrape(metrics_port)
            await stub.Clear(common_pb2.Empty())
            lookup = await stub.Lookup(hicache_pb2.LookupRequest(keys=CHAIN[:3]))
            assert lookup.num_pages == 0
            return reply.pool_name, text

    pool_name, text = asyncio.run(scenario())
    assert not (SHM_DIR / pool_name).exists()  # the way out unlinked the segment
    model = 'model_name=""'  # the service is not told the model's name
    for line in (f"radixmesh:hicache_stored_tokens_total{{{model}}} 8.0",
                 f"radixmesh:hicache_prefetched_tokens_total{{{model}}} 8.0",
                 f'radixmesh:hicache_copy_bytes_total{{direction="l2_to_l3",{model}}} 2048.0',
                 f'radixmesh:hicache_copy_bytes_total{{direction="l3_to_l2",{model}}} 2048.0',
                 f"radixmesh:hicache_lookup_hit_tokens_total{{{model}}} 8.0",
                 f"radixmesh:hicache_l2_slots{{{model}}} 8.0",
                 f"radixmesh:hicache_l3_pages{{{model}}} 2.0"):
        assert line in text, text
    assert f'radixmesh:hicache_copy_seconds_total{{direction="l3_to_l2",{model}}}' in text


async def check_refusals(stub: hicache_pb2_grpc.HiCacheStub, epoch: str) -> None:
    cases = [(stub.Prefetch(transfer("stale", 0, [1])), grpc.StatusCode.FAILED_PRECONDITION,
              "epoch"),
             (stub.Store(transfer(epoch, 0, [9])), grpc.StatusCode.INVALID_ARGUMENT, "slots[0]"),
             (stub.Attach(hicache_pb2.AttachRequest(num_device_pages=4,
                                                    namespace_root=NAMESPACE_ROOT)),
              grpc.StatusCode.INVALID_ARGUMENT, "layout")]
    for call, code, words in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == code
        assert words in (caught.value.details() or "")


def test_a_call_that_times_out_stops_moving_pages(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its deadline a Store's remaining pages are not written: the caller may already
    have handed those slots to other pages."""
    puts: list[bytes] = []
    put = FileStorageBackend.put

    def slow_put(self: FileStorageBackend, key: bytes, data: bytes | memoryview) -> bool:
        puts.append(key)
        time.sleep(0.2)
        return put(self, key, data)

    monkeypatch.setattr(FileStorageBackend, "put", slow_put)
    config = HiCacheConfig(port=free_port(), hicache_storage_backend="file",
                           hicache_storage_dir=str(tmp_path / "l3"), hicache_storage_size=0.01)

    async def scenario() -> None:
        async with running(config) as stub:
            reply = await stub.Attach(attach_request())
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Store(transfer(reply.epoch, 0, [1, 2, 3, 4, 5, 6]), timeout=0.3)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.sleep(1.5)  # the whole store would have taken 1.2 s

    asyncio.run(scenario())
    assert 1 <= len(puts) <= 3, puts
