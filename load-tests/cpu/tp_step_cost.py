#!/usr/bin/env python3
"""What driving a tensor-parallel group costs per step, on the CPU (gloo), at TP=1, 2 and 4.

Two figures per group size, each the median over many decode steps of one batch:
- `send_us`: rank 0's cost of reaching the followers, the plan's protobuf encoding plus one
  pipe write per follower (the part of a step that exists only because of the group);
- `step_us`: a whole decode step (`execute`) of the tiny model, collectives included; its
  growth with the group size on one CPU is gloo's all-reduces and the ranks sharing 2 cores,
  not a figure to expect from NCCL on GPUs.

    python load-tests/cpu/tp_step_cost.py [--batch 8] [--steps 200] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from radixmesh.bench.results import write_record
from radixmesh.make_model import make_model
from radixmesh.services.worker.base import ModelWorker
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.model_runner import ModelRunner
from radixmesh.services.worker.parallel.rank_link import launch_message
from radixmesh.services.worker.parallel.worker_group import TensorParallelWorker
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import ExtendChunk, NewRequest, PageTableWrite, StepPlan

PROMPT = 16


def decode_plans(batch: int, steps: int) -> tuple[StepPlan, list[StepPlan]]:
    """A prefill of `batch` requests, then `steps` decodes of all of them (page size 1)."""
    rids = [f"r{i}" for i in range(batch)]
    pages = iter(range(1, 1 << 30))
    first = StepPlan(1)
    for rid in rids:
        first.new_requests.append(NewRequest(rid, tuple(range(3, 3 + PROMPT)), PROMPT, 0, (),
                                             SamplingParams(temperature=0.0)))
        first.page_writes.append(PageTableWrite(rid, 0, tuple(next(pages) for _ in
                                                              range(PROMPT))))
        first.extends.append(ExtendChunk(rid, 0, PROMPT, True))
    decodes = []
    for step in range(steps):
        plan = StepPlan(step + 2, decodes=list(rids))
        plan.page_writes.extend(PageTableWrite(rid, PROMPT + step, (next(pages),))
                                for rid in rids)
        decodes.append(plan)
    return first, decodes


def median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


def measure(worker: ModelWorker, batch: int, steps: int, followers: int,
            pipe_write_s: float) -> dict[str, float]:
    prefill, decodes = decode_plans(batch, steps)
    worker.execute(prefill)
    step_times, send_times = [], []
    for plan in decodes:
        started = time.perf_counter()
        launch_message(plan)  # what a group's launch sends
        encoded = time.perf_counter()
        send_times.append((encoded - started) + followers * pipe_write_s)
        started = time.perf_counter()
        worker.execute(plan)
        step_times.append(time.perf_counter() - started)
    return {"step_us": median_us(step_times), "send_us": median_us(send_times)}


def pipe_write_seconds(size: int = 2048, repeats: int = 2000) -> float:
    """One `send_bytes` of a plan-sized message to a reader that drains it."""
    import multiprocessing
    import threading

    ours, theirs = multiprocessing.Pipe()
    reader = threading.Thread(target=lambda: [theirs.recv_bytes() for _ in range(repeats)])
    reader.start()
    payload = b"x" * size
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        ours.send_bytes(payload)
        samples.append(time.perf_counter() - started)
    reader.join()
    return statistics.median(samples)


def one_size(size: int, batch: int, steps: int) -> dict[str, float]:
    """Run in a process of its own: a process joins one tensor-parallel group at most."""
    model = make_model(Path(tempfile.mkdtemp()) / "llama", "llama", num_layers=2)
    config = WorkerConfig(model_path=str(model), device="cpu", tp_size=size,
                          max_total_tokens=batch * (PROMPT + steps + 8))
    worker = ModelRunner(config, model) if size == 1 else TensorParallelWorker(config, model)
    try:
        return measure(worker, batch, steps, size - 1, pipe_write_seconds())
    finally:
        worker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--output-dir", type=Path, default=Path("load-tests/results"))
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size is not None:  # a child: one group size, its figures on stdout
        print(json.dumps(one_size(args.size, args.batch, args.steps)))
        return
    figures = {}
    for size in (1, 2, 4):
        child = subprocess.run([sys.executable, __file__, "--size", str(size), "--batch",
                                str(args.batch), "--steps", str(args.steps)],
                               capture_output=True, text=True, check=True)
        figures[f"tp{size}"] = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"TP={size}: {figures[f'tp{size}']}", flush=True)
    record = {"what": "per-step cost of driving a tensor-parallel group on CPU (gloo): plan "
                      "encoding + pipe writes (send_us), and a whole decode step (step_us)",
              "device": "cpu", "model": "tiny llama (make-model defaults, 2 layers)",
              "batch": args.batch, "steps": args.steps,
              **figures}
    out = write_record(record, "tp-step-cost-cpu", args.output_dir, sys.argv)
    print(f"result: {out}")


if __name__ == "__main__":
    main()
