"""FP8 GEMM vs bf16 at Llama-3.1-8B's projection shapes, on a CUDA GPU (not a test).

    python tests/quantization/bench_fp8_gemm.py [--json OUT]

Per shape and token count M: bf16 `F.linear`, the FP8 path as layers run it (per-token
activation quantization + row-wise `torch._scaled_mm`), the bare `_scaled_mm` (the price of
quantizing activations with torch ops is the gap), and the dequantizing fallback. Each is
timed as 50 calls captured in one CUDA graph (decode runs in graphs, so launch cost is left out).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
import torch.nn.functional as F

from radixmesh.services.worker.quantization.fp8 import (
    dequant_linear,
    quantize_rows,
    scaled_mm_linear,
)

SHAPES = {"qkv_proj": (4096, 6144), "o_proj": (4096, 4096), "gate_up_proj": (4096, 28672),
          "down_proj": (14336, 4096)}
TOKENS = (1, 16, 128, 1024, 4096)
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


def time_gemms(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor,
               scale: torch.Tensor) -> dict[str, float]:
    xq, x_scale = quantize_rows(x)
    return {
        "bf16_us": graph_time_us(lambda: F.linear(x, w)),
        "fp8_us": graph_time_us(lambda: scaled_mm_linear(x, q, scale, None)),
        "fp8_bare_mm_us": graph_time_us(lambda: torch._scaled_mm(
            xq, q.t(), x_scale.unsqueeze(-1), scale.unsqueeze(0), out_dtype=torch.bfloat16)),
        "dequant_us": graph_time_us(lambda: dequant_linear(x, q, scale, None)),
    }


def bench() -> list[dict]:
    rows = []
    for name, (k, n) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        q, scale = quantize_rows(w)
        for m in TOKENS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row = {"layer": name, "M": m, "K": k, "N": n, **time_gemms(x, w, q, scale)}
            rows.append(row)
            print(" ".join(f"{key}={value:.1f}" if isinstance(value, float) else
                           f"{key}={value}" for key, value in row.items()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__)
    rows = bench()
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
