#!/usr/bin/env python3
"""Page fetch bandwidth between two nodes' hicache services over TCP loopback (issue 20's
"fetch bandwidth between the two meshes", without the meshes): no GPU is involved, so the
figure taken here is the one the GPU machine's CPU would give, and it is compared with the
plain gRPC loopback figures of ../shared/yardsticks/fetch_breakeven.py on the same machine.

Two `radixmesh serve hicache` processes (A and B), each with its L2 pool and an L3 directory.
This script plays both schedulers and workers: it attaches both with the Llama-3.1-8B page
layout (2 MiB a page, bf16), writes `--pages` pages into A's pool and has A store them to L3,
then asks B, `--rounds` times, to fetch them all from A (FetchRemote: B streams ReadPages from
A, checks every page's checksum and writes it to its own slots). Reported: GB/s per round and
their median (page bytes moved / the FetchRemote call's time).

    python load-tests/cpu/fetch_bandwidth.py [--pages 256] [--rounds 5] [--output-dir DIR]
        [--yardstick ../shared/yardsticks/fetch_breakeven.py]

With --yardstick, that script runs first (it prints one JSON object) and the record holds its
gRPC loopback figures and the ratio of ours to the better of them (issue 20 asks >= 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from radixmesh.bench.results import write_record
from radixmesh.launcher.free_ports import pick_free_ports
from radixmesh.services.hicache.attachment import KVLayout
from radixmesh.shared.host_pool import HostPool
from radixmesh.shared.page_keys import KeyNamespace, page_keys
from radixmesh.shared.protos_gen import hicache_pb2, hicache_pb2_grpc

LAYOUT = KVLayout(num_layers=32, page_size=16, num_kv_heads=8, head_dim=128, dtype="bfloat16")
ROOT = KeyNamespace(model_id="fetch-bandwidth", weights_fingerprint="0", kv_dtype="bfloat16",
                    page_size=LAYOUT.page_size, tp_layout="tp1").root()


def start_hicache(l3_dir: Path, pool_gb: float, port: int) -> subprocess.Popen:
    argv = [sys.executable, "-P", "-m", "radixmesh.cli", "serve", "hicache", "--host",
            "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--hicache-size",
            str(pool_gb), "--hicache-storage-backend", "file", "--hicache-storage-dir",
            str(l3_dir), "--hicache-storage-size", str(2 * pool_gb)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def attach(stub: hicache_pb2_grpc.HiCacheStub) -> hicache_pb2.AttachReply:
    request = hicache_pb2.AttachRequest(
        layout=hicache_pb2.KVLayout(num_layers=LAYOUT.num_layers, page_size=LAYOUT.page_size,
                                    num_kv_heads=LAYOUT.num_kv_heads,
                                    head_dim=LAYOUT.head_dim, dtype=LAYOUT.dtype),
        num_device_pages=1024, namespace_root=ROOT)
    deadline = time.monotonic() + 60
    while True:
        try:
            return await stub.Attach(request, timeout=10)
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def measure(pages: int, rounds: int, a_port: int, b_port: int) -> list[float]:
    keys = page_keys(ROOT, range(pages * LAYOUT.page_size), LAYOUT.page_size)
    slots = list(range(1, pages + 1))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{a_port}") as a_channel, \
            grpc.aio.insecure_channel(f"127.0.0.1:{b_port}") as b_channel:
        a, b = hicache_pb2_grpc.HiCacheStub(a_channel), hicache_pb2_grpc.HiCacheStub(b_channel)
        a_reply, b_reply = await attach(a), await attach(b)
        with HostPool.attach(a_reply.pool_name,
                             LAYOUT.host_pool_layout(a_reply.num_slots + 1)) as pool:
            for slot in slots:
                pool.write_slot(slot, os.urandom(pool.layout.bytes_per_slot))
            page_bytes = pool.layout.bytes_per_slot
        stored = await a.Store(hicache_pb2.PageTransfer(epoch=a_reply.epoch, keys=keys,
                                                        slots=slots), timeout=600)
        assert stored.num_pages == pages, f"A stored {stored.num_pages} of {pages} pages"
        figures = []
        for _ in range(rounds):
            started = time.perf_counter()
            reply = await b.FetchRemote(hicache_pb2.RemoteFetch(
                epoch=b_reply.epoch, keys=keys, slots=slots, address=f"127.0.0.1:{a_port}",
                deadline_s=120), timeout=130)
            seconds = time.perf_counter() - started
            assert reply.num_pages == pages, f"B fetched {reply.num_pages} of {pages} pages"
            figures.append(round(pages * page_bytes / seconds / 1e9, 3))
            print(f"fetched {pages} pages of {page_bytes >> 20} MiB in {seconds:.3f} s: "
                  f"{figures[-1]} GB/s", flush=True)
        return figures


def run_yardstick(path: Path) -> dict[str, float]:
    """The yardstick's gRPC loopback figures (GB/s) on this machine, now."""
    printed = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                             check=True, timeout=600).stdout
    figures = json.loads(printed[printed.index("{"):])
    return {key: value for key, value in figures.items() if key.startswith("grpc_loopback")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output-dir", type=Path, default=Path("load-tests/results"))
    parser.add_argument("--yardstick", type=Path, default=None,
                        help="fetch_breakeven.py, run first for its gRPC loopback figures")
    args = parser.parse_args()
    loopback = run_yardstick(args.yardstick) if args.yardstick else None
    page_mib = LAYOUT.host_pool_layout(1).bytes_per_slot / 2**20
    pool_gb = round(args.pages * page_mib * 2**20 / 1e9 * 1.25 + 0.5, 1)
    a_port, b_port = pick_free_ports(2)
    with tempfile.TemporaryDirectory(prefix="fetch-bandwidth-") as tmp:
        nodes = [start_hicache(Path(tmp) / name, pool_gb, port)
                 for name, port in (("a", a_port), ("b", b_port))]
        try:
            figures = asyncio.run(measure(args.pages, args.rounds, a_port, b_port))
        finally:
            for process in nodes:
                process.terminate()
                process.wait(30)
    record = {"what": "page fetch bandwidth between two hicache services over TCP loopback "
                      "(FetchRemote: ReadPages streamed from A, checked, written to B's L2), "
                      "Llama-3.1-8B pages of 2 MiB; GB/s = page bytes / the call's time",
              "device": "cpu", "cpu_count": os.cpu_count(), "pages": args.pages,
              "page_mib": page_mib, "rounds_gbps": figures,
              "median_gbps": statistics.median(figures)}
    if loopback is not None:
        best = max(loopback.values())
        record |= {"yardstick_grpc_loopback_gbps": loopback,
                   "median_over_best_loopback": round(record["median_gbps"] / best, 3)}
    out = write_record(record, "fetch-bandwidth-cpu", args.output_dir, sys.argv)
    print(f"median {record['median_gbps']} GB/s; result: {out}")


if __name__ == "__main__":
    main()
