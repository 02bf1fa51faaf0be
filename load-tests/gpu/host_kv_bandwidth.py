#!/usr/bin/env python3
"""Host <-> device page copies of the worker: bandwidth, and what they cost a forward pass.

Design §4's yardstick, "a plain pinned copy", is torch copying a pinned host tensor of 1 GiB
to the device with `non_blocking=True`, median of 5. Beside it, `HostKV.load` moves N random
host slots into N random device pages of a Llama-3.1-8B-shaped KV pool (32 layers, 8 KV heads,
head dim 128, bf16, page size 16: 2 MiB per page), and `HostKV.backup` the other way; each a
median of 5. The host pool is real shared memory, pinned, as the hicache service makes it.

Interference: a chain of bf16 GEMMs of a prefill's shape (8192 x 4096 x 14336) on the compute
stream, timed alone and with a 16-page backup (or load) queued before every GEMM, as a busy
prefill step would see them. Every figure is taken for the page-copy kernels (`kernels`) and for
plain torch ops (`torch`, the path before the kernels).

    python load-tests/gpu/host_kv_bandwidth.py --pages 512 --output-dir $OUT
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from radixmesh.bench.results import write_record
from radixmesh.services.worker.host_kv import HostKV, pool_layout
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.shared.host_pool import HostPool
from radixmesh.shared.step import HostPoolAttachment, PageCopies

REPEATS = 5


def timed(fn) -> float:
    """Median seconds of `fn` (which queues GPU work), synchronised around each run."""
    fn()
    torch.cuda.synchronize()
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def pinned_copy_gbps() -> float:
    host = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    device = torch.empty_like(host, device="cuda")
    return (1 << 30) / timed(lambda: device.copy_(host, non_blocking=True)) / 1e9


def page_copy_gbps(num_pages: int, kernels: bool) -> dict[str, float]:
    with host_kv(num_pages * 2, kernels) as (host, layout):
        copies = random_copies(num_pages, num_pages * 2, seed=1)
        nbytes = num_pages * layout.bytes_per_slot
        load = timed(lambda: host.load(copies).wait_all())
        step = iter(range(1, 1 << 30))
        backup = timed(lambda: host.backup(next(step), copies))
        return {"load_gbps": nbytes / load / 1e9, "backup_gbps": nbytes / backup / 1e9,
                "bytes": nbytes}


def stream_seconds(fn) -> float:
    """Median seconds the current stream spends on what `fn` queues (copy streams beside it
    are not waited for)."""
    fn()
    seconds = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3)
    return statistics.median(seconds)


def interference(kernels: bool, pages_per_gemm: int = 16, gemms: int = 40) -> dict[str, float]:
    """The GEMM chain's slowdown (fraction) with backups, then loads, queued beside it."""
    a = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(4096, 14336, device="cuda", dtype=torch.bfloat16)
    with host_kv(pages_per_gemm * 4, kernels) as (host, _layout):
        copies = random_copies(pages_per_gemm, pages_per_gemm * 4, seed=2)
        step = iter(range(1, 1 << 30))

        def chain(copy=None) -> None:
            for _ in range(gemms):
                if copy is not None:
                    copy()
                a @ b

        alone = stream_seconds(chain)
        with_backups = stream_seconds(lambda: chain(lambda: host.backup(next(step), copies)))
        with_loads = stream_seconds(lambda: chain(lambda: host.load(copies)))
    return {"gemm_ms": alone / gemms * 1e3,
            "slowdown_with_backups": with_backups / alone - 1,
            "slowdown_with_loads": with_loads / alone - 1}


@contextmanager
def host_kv(num_slots: int, kernels: bool) -> Iterator[tuple[HostKV, object]]:
    kv = KVPool(num_slots, 16, 32, 8, 128, torch.bfloat16, "cuda")
    layout = pool_layout(kv, num_slots)
    pool = HostPool.create(None, layout)
    host = HostKV(kv, kernels=kernels)
    try:
        host.attach(HostPoolAttachment(pool.name, num_slots))
        yield host, layout
    finally:
        host.close()
        pool.close()


def random_copies(count: int, among: int, seed: int) -> PageCopies:
    generator = torch.Generator().manual_seed(seed)
    pages = (torch.randperm(among, generator=generator)[:count] + 1).tolist()
    slots = (torch.randperm(among, generator=generator)[:count] + 1).tolist()
    return PageCopies(tuple(pages), tuple(slots))


def gpu_uuid() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=512)
    parser.add_argument("--output-dir", type=Path, default=Path("."))
    args = parser.parse_args()
    pinned = pinned_copy_gbps()
    paths = {}
    for name, kernels in (("kernels", True), ("torch", False)):
        figures = {**page_copy_gbps(args.pages, kernels), **interference(kernels)}
        figures["load_over_pinned"] = figures["load_gbps"] / pinned
        paths[name] = {key: round(value, 3) for key, value in figures.items()}
    record = {"what": "HostKV page loads/backups vs a plain pinned 1 GiB copy (design §4), and "
                      "the slowdown of a GEMM chain beside 16-page copies",
              "device": torch.cuda.get_device_name(), "gpu_uuid": gpu_uuid(),
              "pages": args.pages,
              "kv_shape": "llama-3.1-8b, bf16, page size 16 (2 MiB per page)",
              "pinned_copy_gbps": round(pinned, 2), **paths}
    out = write_record(record, "host-kv-bandwidth", args.output_dir, sys.argv)
    print(out.read_text())


if __name__ == "__main__":
    main()
