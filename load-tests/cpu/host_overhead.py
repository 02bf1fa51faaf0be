#!/usr/bin/env python3
"""Host overhead per decode step, on the CPU, in-process: what every step costs before and
after the device's work, at batch 1, 64, 256 and 1024 (issue 16's yardstick).

For each batch size, that many requests are admitted and prefilled, then decode steps are
timed part by part (median µs per step):
- `scheduler_plan`: `Scheduler.schedule()` (batch formation, page allocation, the plan);
- `link_plan`: the plan over the wire, both ends (to protobuf, bytes, back), as the
  scheduler -> worker stream carries it, less the socket;
- `worker_table`: the worker's request bookkeeping for the plan (the null worker's `execute`:
  the request table applied and committed, what the model worker does too);
- `worker_batch`: the model worker's batch building for the plan (`build_forward_batch`), over
  a KV pool of tiny dimensions (host cost does not depend on them); the attention backend's
  own planning is left out: the CPU's torch backend is no measure of FlashInfer's;
- `link_result`, `scheduler_result`: the result's way back and `Scheduler.process_result()`.

    python load-tests/cpu/host_overhead.py [--steps 50] [--output-dir load-tests/results]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from radixmesh.bench.results import write_record
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.services.worker.attention.torch_backend import TorchAttentionBackend
from radixmesh.services.worker.batch_builder import build_forward_batch
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.services.worker.page_table import DevicePageTable
from radixmesh.services.worker.request_table import RequestTable
from radixmesh.shared.protos_gen import internal_pb2
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo
from radixmesh.shared.wire import (
    plan_from_proto,
    plan_to_proto,
    result_from_proto,
    result_to_proto,
)

BATCHES = (1, 64, 256, 1024)
PAGE = 16
PARTS = ("scheduler_plan", "link_plan", "worker_table", "worker_batch", "link_result",
         "scheduler_result")


def timed(samples: list[float], fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    samples.append(time.perf_counter() - started)
    return out


def plan_over_link(plan: StepPlan) -> StepPlan:
    data = plan_to_proto(plan).SerializeToString()
    return plan_from_proto(internal_pb2.StepPlan.FromString(data))


def result_over_link(result: StepResult) -> StepResult:
    data = result_to_proto(result).SerializeToString()
    return result_from_proto(internal_pb2.StepResult.FromString(data))


class BatchBuilder:
    """The model worker's host work for a plan, minus the model and the attention backend's
    planning: its own request table and a KV pool of tiny dimensions."""

    def __init__(self, info: WorkerInfo) -> None:
        self.page_table = DevicePageTable(info.max_running_requests,
                                          info.context_len // info.page_size, torch.device("cpu"))
        self.table = RequestTable(
            info.max_running_requests, lambda: 0,
            on_pages=lambda req, start, pages: self.page_table.write(req.slot, start, pages))
        self.kv_pool = KVPool(info.num_pages, info.page_size, 1, 1, 8, torch.float32, "cpu")
        self.backend = TorchAttentionBackend(self.kv_pool)
        self.last_tokens = torch.zeros(info.max_running_requests, dtype=torch.int64)

    def build(self, plan: StepPlan) -> None:
        rows = self.table.apply(plan)
        if rows:
            build_forward_batch(rows, self.kv_pool, self.backend, self.last_tokens,
                                self.page_table)
        self.table.commit(plan, rows, [0] * len(rows.sampled))


def measure(batch: int, steps: int, prompt_tokens: int) -> dict[str, float]:
    pages = batch * (prompt_tokens + steps + 2 * PAGE) // PAGE + 1
    info = WorkerInfo(model_id="host-overhead", num_pages=pages, page_size=PAGE,
                      context_len=prompt_tokens + steps + 2 * PAGE, vocab_size=32000, eos_token_ids=(2,),
                      kv_dtype="none", max_running_requests=batch)
    scheduler = Scheduler(SchedulerConfig(max_running_requests=batch,
                                          chunked_prefill_size=-1, decode_log_interval=1 << 30), info)
    worker, builder = NullWorker(info), BatchBuilder(info)
    # Long enough that no request finishes while steps are timed (the pool fits them all).
    sampling = SamplingParams(temperature=0.0, max_new_tokens=steps + 4, ignore_eos=True)
    for index in range(batch):
        prompt = [3 + (index + position) % 30000 for position in range(prompt_tokens)]
        scheduler.add_request(TokenizedRequest(f"r{index}", tuple(prompt), sampling))
    samples: dict[str, list[float]] = {part: [] for part in PARTS}
    decodes = 0
    while decodes < steps:
        plan = timed(samples["scheduler_plan"], scheduler.schedule)
        decoding = plan is not None and not plan.extends
        sent = timed(samples["link_plan"], plan_over_link, plan)
        timed(samples["worker_batch"], builder.build, sent)
        result = timed(samples["worker_table"], worker.execute, sent)
        back = timed(samples["link_result"], result_over_link, result)
        timed(samples["scheduler_result"], scheduler.process_result, back)
        if not decoding:  # the prefill steps are not what is measured
            for part in PARTS:
                samples[part].pop()
        decodes += decoding
    figures = {part: round(statistics.median(values) * 1e6, 1)
               for part, values in samples.items()}
    figures["total"] = round(sum(figures[part] for part in PARTS), 1)
    return figures


def cpu_model() -> str:
    """The processor's model name (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--prompt-tokens", type=int, default=512,
                        help="each request's prompt: its page table's length in decode")
    parser.add_argument("--output-dir", type=Path, default=Path("load-tests/results"))
    args = parser.parse_args()
    # One thread, as a worker's host side runs: torch's intra-op threads only add contention
    # (and noise) to operations this small.
    torch.set_num_threads(1)
    figures = {}
    for batch in BATCHES:
        figures[f"batch_{batch}"] = measure(batch, args.steps, args.prompt_tokens)
        print(f"batch {batch:5d}: {figures[f'batch_{batch}']}", flush=True)
    record = {"what": "host overhead per decode step, µs (median), in-process on CPU: the "
                      "scheduler, both ends of the links (protobuf), the worker's request "
                      "table and batch building; no model, no sockets",
              "device": "cpu", "cpu": cpu_model(),
              "prompt_tokens": args.prompt_tokens, "page_size": PAGE, "steps": args.steps,
              **figures}
    out = write_record(record, "host-overhead-cpu", args.output_dir, sys.argv)
    print(f"result: {out}")


if __name__ == "__main__":
    main()
