#!/usr/bin/env python3
"""What tracing costs the worker per decode step, on the CPU: its `worker.step` span (design
§6), made on the step thread for a batch whose requests are all sampled, at batch 1, 64, 256
and 1024 (issue 14's cost at large batch, where an H100 lost 14% of its `sharegpt-like`
throughput with tracing on).

The real OpenTelemetry SDK and OTLP exporter send every span to `span_sink.py`, a receiver in
another process, as a traced mesh does. Per batch size, after the requests are registered,
`--steps` decode steps are timed with tracing on and off:
- `step_thread_us`: median µs per step of `StepSpans.launching` + `finished`, the work the
  step thread does between two launches;
- `process_cpu_us`: the process's CPU time per step over all steps, the exporter's thread
  included (it takes the GIL from the step thread while it encodes spans).
A sleep between steps stands for the device's share of a step.

    python load-tests/cpu/trace_step_cost.py [--steps 300] [--output-dir load-tests/results]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from radixmesh.bench.results import write_record
from radixmesh.services.worker.step_spans import StepSpans
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder
from radixmesh.shared.step import NewRequest, StepPlan
from radixmesh.shared.trace_context import TraceContext
from radixmesh.shared.tracing import TracingFlags, start_tracing, stop_tracing

BATCHES = (1, 64, 256, 1024)
SINK = Path(__file__).resolve().parents[1] / "gpu" / "span_sink.py"
DEVICE_SHARE_S = 0.002


def sampled_trace(rng: random.Random) -> TraceContext:
    return TraceContext.of_span(rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, 1, "")


def measure(recorder: SpanRecorder, batch: int, steps: int) -> dict[str, float]:
    rng = random.Random(batch)
    spans = StepSpans(recorder)
    rids = [f"r{index}" for index in range(batch)]
    sampling = SamplingParams(max_new_tokens=steps + 1)
    registered = [NewRequest(rid, (1,), 1, 0, (), sampling, sampled_trace(rng)) for rid in rids]
    spans.launching(StepPlan(0, new_requests=registered))
    on_thread: list[float] = []
    cpu_started = time.process_time()
    for step_id in range(1, steps + 1):
        started = time.perf_counter()
        step = spans.launching(StepPlan(step_id, decodes=rids))
        if step is not None:
            spans.finished(step, cuda_graph=True)
        on_thread.append(time.perf_counter() - started)
        time.sleep(DEVICE_SHARE_S)
    cpu = time.process_time() - cpu_started
    return {"step_thread_us": round(statistics.median(on_thread) * 1e6, 1),
            "process_cpu_us": round(cpu / steps * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--port", type=int, default=14317, help="the span sink's, on 127.0.0.1")
    parser.add_argument("--output-dir", type=Path, default=Path("load-tests/results"))
    args = parser.parse_args()
    address = f"127.0.0.1:{args.port}"
    sink = subprocess.Popen([sys.executable, str(SINK), address], stdout=subprocess.DEVNULL)
    try:
        time.sleep(1.5)  # the sink listening; a span sent before is retried by the exporter
        recorder = start_tracing("worker", TracingFlags(enable_trace=True,
                                                        otlp_traces_endpoint=address))
        figures = {}
        for batch in BATCHES:
            figures[f"batch_{batch}"] = {"on": measure(recorder, batch, args.steps),
                                         "off": measure(DISABLED, batch, args.steps)}
            print(f"batch {batch:5d}: {figures[f'batch_{batch}']}", flush=True)
        dropped = recorder.dropped_spans
        stop_tracing(recorder)
    finally:
        sink.terminate()
        sink.wait()
    record = {"what": "tracing's cost to the worker per decode step, every request sampled: "
                      "worker.step spans (made on the step thread, exported over OTLP/gRPC to "
                      "a receiver in another process); µs, on CPU",
              "device": "cpu", "steps": args.steps, "device_share_s": DEVICE_SHARE_S,
              **figures, "dropped_spans": dropped}
    out = write_record(record, "trace-step-cost-cpu", args.output_dir, sys.argv)
    print(f"result: {out}")


if __name__ == "__main__":
    main()
