#!/usr/bin/env python3
"""Host -> device load bandwidth of the worker's page copies against a plain pinned copy.

Design §4's yardstick, "a plain pinned copy", is torch copying a pinned host tensor of 1 GiB
to the device with `non_blocking=True`, median of 5. Beside it, `HostKV.load` moves N random
host slots into N random device pages of a Llama-3.1-8B-shaped KV pool (32 layers, 8 KV heads,
head dim 128, bf16, page size 16: 2 MiB per page), and `HostKV.backup` the other way; each a
median of 5. The host pool is real shared memory, pinned, as the hicache service makes it.

    python load-tests/gpu/host_kv_bandwidth.py --pages 512 --output-dir $OUT
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

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


def page_copy_gbps(num_pages: int) -> dict[str, float]:
    kv = KVPool(num_pages * 2, 16, 32, 8, 128, torch.bfloat16, "cuda")
    layout = pool_layout(kv, num_pages * 2)
    pool = HostPool.create(None, layout)
    host = HostKV(kv)
    try:
        host.attach(HostPoolAttachment(pool.name, num_pages * 2))
        generator = torch.Generator().manual_seed(1)
        pages = (torch.randperm(num_pages * 2, generator=generator)[:num_pages] + 1).tolist()
        slots = (torch.randperm(num_pages * 2, generator=generator)[:num_pages] + 1).tolist()
        copies = PageCopies(tuple(pages), tuple(slots))
        nbytes = num_pages * layout.bytes_per_slot
        load = timed(lambda: host.load(copies).wait_all())
        step = iter(range(1, 1 << 30))
        backup = timed(lambda: host.backup(next(step), copies))
        return {"load_gbps": nbytes / load / 1e9, "backup_gbps": nbytes / backup / 1e9,
                "bytes": nbytes}
    finally:
        host.close()
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=512)
    parser.add_argument("--output-dir", type=Path, default=Path("."))
    args = parser.parse_args()
    pinned = pinned_copy_gbps()
    pages = page_copy_gbps(args.pages)
    record = {"what": "HostKV page loads/backups vs a plain pinned 1 GiB copy (design §4)",
              "device": torch.cuda.get_device_name(), "pages": args.pages,
              "kv_shape": "llama-3.1-8b, bf16, page size 16 (2 MiB per page)",
              "pinned_copy_gbps": round(pinned, 2),
              **{key: round(value, 2) for key, value in pages.items()},
              "load_over_pinned": round(pages["load_gbps"] / pinned, 3),
              "command": f"python load-tests/gpu/host_kv_bandwidth.py --pages {args.pages}",
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    name = f"host-kv-bandwidth-{time.strftime('%Y%m%d-%H%M%S')}.json"
    (args.output_dir / name).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
