"""FP8 GEMM vs bf16 at Llama-3.1-8B's projection shapes, on a CUDA GPU (not a test).

    python -m tests.quantization.bench_fp8_gemm [--json OUT] [--sweep [--configs-out DIR]]

Per shape and token count M: bf16 `F.linear`, the FP8 path as layers run it (the Triton
per-token quantization, then row-wise `torch._scaled_mm`), the same with the fused kernels off
(quantization in torch ops), the bare `_scaled_mm`, the quantization kernel alone, the
dequantizing fallback, and up to 16 tokens the quantization followed by the few-token Triton
GEMM (kernels/fp8_gemm.py) in its default tiling; with `--sweep`, that GEMM alone in every
tiling at M = 1 and 16, the fastest per shape (summed over both) written as this GPU's table
(kernels/tuned_configs.py) into the installed package, so later meshes of the same machine use
it, and into --configs-out for committing. Each is timed as calls captured in one CUDA graph
(decode runs in graphs, so launch cost is left out).
"""

from __future__ import annotations

import itertools
import json
import time
from functools import partial

import torch
import torch.nn.functional as F

from radixmesh.kernels.fp8_gemm import (
    SMALL_M_KERNEL,
    SmallMConfig,
    fits_small_m,
    fp8_gemm_small_m,
    small_m_config,
)
from radixmesh.kernels.fp8_quant import per_token_quant_fp8
from radixmesh.kernels.fused_gate import set_fused_kernels
from radixmesh.services.worker.quantization.fp8 import (
    AMAX_FLOOR,
    dequant_linear,
    quantize_rows,
    scaled_mm_linear,
)
from tests.kernels.graph_timing import graph_time_us
from tests.kernels.sweep_cli import parse_bench_args, write_tables

SHAPES = {"qkv_proj": (4096, 6144), "o_proj": (4096, 4096), "gate_up_proj": (4096, 28672),
          "down_proj": (14336, 4096)}
TOKENS = (1, 16, 128, 1024, 4096)
SMS = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 0
# The sweep's grid: BLOCK_N, BLOCK_K, SPLIT_K, (num_warps, num_stages); 48 tilings, each a
# compile of its own (a second or two), so that the sweep fits a device call beside the tests.
SWEEP_GRID = ((32, 64, 128), (128, 256), (1, 2, 4, 8), ((4, 4), (8, 4)))


def unfused_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    previous = set_fused_kernels(False)
    try:
        return scaled_mm_linear(x, q, scale, None)
    finally:
        set_fused_kernels(previous)


def time_gemms(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor,
               scale: torch.Tensor) -> dict[str, float]:
    xq, x_scale = quantize_rows(x)
    times = {
        "bf16_us": graph_time_us(lambda: F.linear(x, w)),
        "fp8_us": graph_time_us(lambda: scaled_mm_linear(x, q, scale, None)),
        "fp8_torch_quant_us": graph_time_us(lambda: unfused_linear(x, q, scale)),
        "fp8_bare_mm_us": graph_time_us(lambda: torch._scaled_mm(
            xq, q.t(), x_scale.unsqueeze(-1), scale.unsqueeze(0), out_dtype=torch.bfloat16)),
        "quant_kernel_us": graph_time_us(lambda: per_token_quant_fp8(x, AMAX_FLOOR)[0]),
        "dequant_us": graph_time_us(lambda: dequant_linear(x, q, scale, None)),
    }
    config = small_m_config(q.shape[0], q.shape[1], SMS)
    if fits_small_m(x.shape[0], q.shape[0], q.shape[1], config):
        # What the layer costs with the few-token GEMM: the quantization, then the kernel.
        times["fp8_small_m_us"] = graph_time_us(lambda: fp8_gemm_small_m(
            *per_token_quant_fp8(x, AMAX_FLOOR), q, scale, config))
    return times


def sweep(q: torch.Tensor, scale: torch.Tensor, name: str) -> tuple[list[dict], SmallMConfig]:
    """The few-token GEMM alone (quantized input given) under every tiling of SWEEP_GRID that
    fits, at 1 and 16 rows; returns the rows and the tiling fastest over both."""
    rows, totals = [], {}
    n, k = q.shape
    inputs = {m: quantize_rows(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
              for m in (1, 16)}
    for block_n, block_k, split_k, (warps, stages) in itertools.product(*SWEEP_GRID):
        config = SmallMConfig(block_n=block_n, block_k=block_k, split_k=split_k,
                              num_warps=warps, num_stages=stages)
        if not fits_small_m(16, n, k, config):
            continue
        try:
            times = {m: graph_time_us(partial(fp8_gemm_small_m, *inputs[m], q, scale, config),
                                      calls=20, replays=3) for m in inputs}
        except Exception as error:  # noqa: BLE001 (a tiling the GPU cannot run: too much smem)
            print(f"sweep layer={name} {config}: {type(error).__name__}", flush=True)
            continue
        totals[config] = sum(times.values())
        rows += [{"layer": name, "M": m, **vars(config), "us": us, "tb_s": n * k / us / 1e6}
                 for m, us in times.items()]
    best = min(totals, key=totals.get)
    print(f"sweep layer={name} best: {best} ({totals[best]:.1f} us at M=1 plus M=16)", flush=True)
    return rows, best


def bench(with_sweep: bool) -> tuple[list[dict], list[dict], dict]:
    rows, sweeps, best = [], [], {}
    for name, (k, n) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        q, scale = quantize_rows(w)
        for m in TOKENS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row = {"layer": name, "M": m, "K": k, "N": n, **time_gemms(x, w, q, scale)}
            rows.append(row)
            print(" ".join(f"{key}={value:.1f}" if isinstance(value, float) else
                           f"{key}={value}" for key, value in row.items()), flush=True)
        if with_sweep:
            swept, best[(n, k)] = sweep(q, scale, name)
            sweeps += swept
    return rows, sweeps, best


def main() -> None:
    args = parse_bench_args(__doc__)
    print(torch.cuda.get_device_name(), torch.__version__)
    started = time.perf_counter()
    rows, sweeps, best = bench(args.sweep)
    print(f"benched in {time.perf_counter() - started:.0f} s")
    write_tables(SMALL_M_KERNEL, best, args, "python -m tests.quantization.bench_fp8_gemm --sweep")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rows": rows, "sweep": sweeps}, out, indent=1)


if __name__ == "__main__":
    main()
