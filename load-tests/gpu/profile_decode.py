"""Where a batch-1 decode step's time goes: host-side cProfile and device-side kernel totals.

    python3 load-tests/gpu/profile_decode.py MODEL_DIR [--steps 64]   (on the GPU machine)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

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
    profiler = cProfile.Profile()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as trace:
        profiler.enable()
        while engine.has_work:
            engine.step()
        profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    print(trace.key_averages().table(sort_by="cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
