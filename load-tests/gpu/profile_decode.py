"""Where a decode step's time goes: host-side cProfile and device-side kernel totals.

    python3 load-tests/gpu/profile_decode.py MODEL_DIR [--steps 64] [--batch-size 1]
        [--disable-cuda-graph] [--attention-backend auto] [--quantization fp8]
        [--kv-cache-dtype fp8_e4m3]                                (on the GPU machine)

Runs `--batch-size` requests of 128 prompt tokens through their prefill, then profiles
`--steps` decode steps of the whole batch.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from radixmesh.engine import Engine
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.worker.config import WorkerConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_path")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--disable-cuda-graph", action="store_true")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--quantization", default=None, choices=("fp8",))
    parser.add_argument("--kv-cache-dtype", default="auto")
    args = parser.parse_args()
    engine = Engine(WorkerConfig(model_path=args.model_path, load_format="dummy",
                                 dtype="bfloat16", disable_cuda_graph=args.disable_cuda_graph,
                                 attention_backend=args.attention_backend,
                                 quantization=args.quantization,
                                 kv_cache_dtype=args.kv_cache_dtype), SchedulerConfig())
    engine.submit("warm", {"input_ids": list(range(5, 133)), "max_new_tokens": 8,
                           "ignore_eos": True, "temperature": 0})
    while engine.has_work:
        engine.step()
    for i in range(args.batch_size):
        # Distinct first tokens: no request reuses another's prefix.
        engine.submit(f"r{i}", {"input_ids": [5 + i] + list(range(6, 133)),
                                "max_new_tokens": args.steps + 4, "ignore_eos": True,
                                "temperature": 0})
    while engine.scheduler.waiting:  # prefills (prefill-first scheduling)
        engine.step()
    for _ in range(2):  # settle the pipeline: the last prefill is in flight as the queue empties
        engine.step()
    start = time.perf_counter()
    profiler = cProfile.Profile()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as trace:
        profiler.enable()
        while engine.has_work:
            engine.step()
        profiler.disable()
    wall_ms = (time.perf_counter() - start) * 1e3 / args.steps
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    events = trace.key_averages()
    print(events.table(sort_by="cuda_time_total", row_limit=20))
    kernel_ms = sum(e.self_device_time_total for e in events) / 1e3 / args.steps
    print(f"batch {args.batch_size}, cuda graph {not args.disable_cuda_graph}, "
          f"{args.attention_backend} attention, weights {args.quantization or 'bf16'}, "
          f"KV {args.kv_cache_dtype}")
    print(f"per decode step (profiled, so slower than a bench): wall {wall_ms:.2f} ms, "
          f"GPU kernels {kernel_ms:.2f} ms, GPU idle {wall_ms - kernel_ms:.2f} ms")


if __name__ == "__main__":
    main()
