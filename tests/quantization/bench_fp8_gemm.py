"""FP8 GEMM vs bf16 at Llama-3.1-8B's projection shapes, on a CUDA GPU (not a test).

    python tests/quantization/bench_fp8_gemm.py [--json OUT] [--sweep]

Per shape and token count M: bf16 `F.linear`, the FP8 path as layers run it (the Triton
per-token quantization, then row-wise `torch._scaled_mm`), the same with the fused kernels off
(quantization in torch ops), the bare `_scaled_mm`, the quantization kernel alone, the
dequantizing fallback, and up to 16 tokens the quantization followed by the few-token Triton
GEMM (kernels/fp8_gemm.py) in its default tiling; with `--sweep`, that GEMM alone in every
tiling at M = 1 and 16. Each is timed as 50 calls captured in one CUDA graph (decode runs in
graphs, so launch cost is left out).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from radixmesh.kernels.fp8_gemm import (
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

SHAPES = {"qkv_proj": (4096, 6144), "o_proj": (4096, 4096), "gate_up_proj": (4096, 28672),
          "down_proj": (14336, 4096)}
TOKENS = (1, 16, 128, 1024, 4096)
SMS = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 0
CALLS = 50


def graph_time_us(fn: Callable[[], torch.Tensor]) -> float:
    """Microseconds per call, from a CUDA graph of CALLS calls replayed a few times."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()  # warm-up outside capture (cuBLASLt picks its kernels here)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (5 * CALLS)


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


def sweep(q: torch.Tensor, scale: torch.Tensor, name: str) -> list[dict]:
    """The few-token GEMM alone (quantized input given) under every tiling that fits."""
    rows = []
    n, k = q.shape
    for m in (1, 16):
        xq, x_scale = quantize_rows(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
        for block_n in (32, 64, 128):
            for block_k in (128, 256):
                for split_k in (1, 2, 4, 8):
                    config = SmallMConfig(block_n=block_n, block_k=block_k, split_k=split_k)
                    if not fits_small_m(m, n, k, config):
                        continue
                    us = graph_time_us(partial(fp8_gemm_small_m, xq, x_scale, q, scale, config))
                    rows.append({"layer": name, "M": m, "block_n": block_n, "block_k": block_k,
                                 "split_k": split_k, "us": us, "tb_s": n * k / us / 1e6})
        best = min((r for r in rows if r["M"] == m), key=lambda r: r["us"])
        print(f"sweep layer={name} M={m} best: {best}", flush=True)
    return rows


def bench(with_sweep: bool) -> tuple[list[dict], list[dict]]:
    rows, sweeps = [], []
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
            sweeps += sweep(q, scale, name)
    return rows, sweeps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default=None)
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__)
    rows, sweeps = bench(args.sweep)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rows": rows, "sweep": sweeps}, out, indent=1)


if __name__ == "__main__":
    main()
