"""Where a batch-1 decode step's time goes: host-side cProfile and device-side kernel totals.

    python3 load-tests/gpu/profile_decode.py MODEL_DIR [--steps 64]   (on the GPU machine)
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
    args = parser.parse_args()
    engine = Engine(WorkerConfig(model_path=args.model_path, load_format="dummy",
                                 dtype="bfloat16"), SchedulerConfig())
    engine.submit("warm", {"input_ids": list(range(5, 133)), "max_new_tokens": 8,
                           "ignore_eos": True, "temperature": 0})
    while engine.has_work:
        engine.step()
    engine.submit("r", {"input_ids": list(range(5, 133)), "max_new_tokens": args.steps,
                        "ignore_eos": True, "temperature": 0})
    engine.step()  # prefill
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
    print(f"per decode step (profiled, so slower than a bench): wall {wall_ms:.2f} ms, "
          f"GPU kernels {kernel_ms:.2f} ms, GPU idle {wall_ms - kernel_ms:.2f} ms")


if __name__ == "__main__":
    main()
