"""Device-to-device copy bandwidth of this GPU, counting bytes read and written (KINDS.md's
convention): the yardstick that a weight-read-bound decode step is held against (issue 22's
70B FP8 `decode-b1` bound is its weight bytes over this figure).

    python load-tests/gpu/copy_bandwidth.py [--gib 4] [--repeats 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch


def copy_seconds(gib: float, repeats: int) -> list[float]:
    """Seconds of each timed `dst.copy_(src)` of `gib` GiB, after three warm-ups."""
    elements = int(gib * 2**30) // 2
    src = torch.empty(elements, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    seconds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=4.0, help="size of the copied buffer")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    seconds = copy_seconds(args.gib, args.repeats)
    moved = 2 * args.gib * 2**30  # read once and written once
    result = {
        "device": torch.cuda.get_device_name(),
        "gib_copied": args.gib,
        "repeats": args.repeats,
        "median_tb_s": round(moved / statistics.median(seconds) / 1e12, 3),
        "best_tb_s": round(moved / min(seconds) / 1e12, 3),
    }
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
