"""The batch-invariant GEMM (kernels/invariant_matmul.py) against cuBLAS at Llama-3.1-8B's
shapes, bf16, on a CUDA GPU (not a test).

    python -m tests.kernels.bench_invariant_mm [--json OUT] [--sweep [--configs-out DIR]]

Per weight shape and row count M: `F.linear` (cuBLAS, what runs without
--enable-deterministic-inference), the invariant kernel in its current tiling, and the torch
way it replaced (one cuBLAS call per 128-row block). With --sweep, every tiling of SWEEP_GRID
per shape; the one with the smallest sum over M of its time relative to cuBLAS's is written as
this GPU's table (kernels/tuned_configs.py) into the installed package and --configs-out. One
tiling serves every M of a shape (that is what keeps rows invariant), so it is a compromise
between decode (few rows: many column tiles wanted) and prefill (thousands of rows).
"""

from __future__ import annotations

import itertools
import json
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from radixmesh.kernels.invariant_matmul import (
    INVARIANT_KERNEL,
    InvariantTiling,
    invariant_mm,
    tiling_for,
)
from radixmesh.services.worker.batch_invariant import GPU_ROW_BLOCK, blocked_mm
from tests.kernels.graph_timing import graph_time_us
from tests.kernels.sweep_cli import parse_bench_args, write_tables

SHAPES = {"qkv_proj": (4096, 6144), "o_proj": (4096, 4096), "gate_up_proj": (4096, 28672),
          "down_proj": (14336, 4096), "lm_head": (4096, 128256)}  # (K, N)
TOKENS = (1, 64, 256, 1024, 4096)
# BLOCK_M, BLOCK_N, BLOCK_K, (num_warps, num_stages): 36 tilings, one compile each.
SWEEP_GRID = ((64, 128), (64, 128, 256), (64, 128), ((4, 3), (8, 3), (8, 4)))


def time_shape(name: str, k: int, n: int) -> list[dict]:
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    rows = []
    for m in TOKENS:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        row = {"layer": name, "M": m, "K": k, "N": n,
               "cublas_us": graph_time_us(partial(F.linear, x, weight), calls=10),
               "invariant_us": graph_time_us(partial(invariant_mm, x, weight.t()), calls=10),
               "blocked_us": graph_time_us(
                   partial(blocked_mm, x, weight.t(), GPU_ROW_BLOCK), calls=10)}
        rows.append(row)
        print(" ".join(f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}"
                       for key, value in row.items()), flush=True)
    return rows


def sweep(name: str, k: int, n: int, cublas_us: dict[int, float]
          ) -> tuple[list[dict], InvariantTiling]:
    """Every tiling of SWEEP_GRID at every M; the best by summed time relative to cuBLAS."""
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    inputs = {m: torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for m in TOKENS}
    rows, scores = [], {}
    for block_m, block_n, block_k, (warps, stages) in itertools.product(*SWEEP_GRID):
        tiling = InvariantTiling(block_m=block_m, block_n=block_n, block_k=block_k,
                                 num_warps=warps, num_stages=stages)
        try:
            times = {m: graph_time_us(partial(invariant_mm, x, weight.t(), tiling=tiling),
                                      calls=5, replays=3) for m, x in inputs.items()}
        except Exception as error:  # noqa: BLE001 (a tiling the GPU cannot run: too much smem)
            print(f"sweep layer={name} {tiling}: {type(error).__name__}", flush=True)
            continue
        scores[tiling] = sum(times[m] / cublas_us[m] for m in TOKENS)
        rows += [{"layer": name, "M": m, **vars(tiling), "us": us} for m, us in times.items()]
    best = min(scores, key=scores.get)
    print(f"sweep layer={name} best: {best} (mean {scores[best] / len(TOKENS):.2f}x cuBLAS)",
          flush=True)
    return rows, best


def main() -> None:
    args = parse_bench_args(__doc__)
    device = torch.cuda.get_device_name()
    print(device, torch.__version__, "default tiling:", tiling_for(4096, 4096, 0))
    started = time.perf_counter()
    rows, sweeps, best = [], [], {}
    for name, (k, n) in SHAPES.items():
        shape_rows = time_shape(name, k, n)
        rows += shape_rows
        if args.sweep:
            swept, best[(n, k)] = sweep(name, k, n, {r["M"]: r["cublas_us"] for r in shape_rows})
            sweeps += swept
    print(f"benched in {time.perf_counter() - started:.0f} s")
    write_tables(INVARIANT_KERNEL, best, args, "python -m tests.kernels.bench_invariant_mm --sweep")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "torch": torch.__version__,
                                               "rows": rows, "sweep": sweeps}, indent=1))


if __name__ == "__main__":
    main()
