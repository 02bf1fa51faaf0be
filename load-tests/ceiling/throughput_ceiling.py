#!/usr/bin/env python3
"""How far a measured throughput is from what its scheduling policy allows on the device:
the step-cost model of `radixmesh/bench/ceiling.py` replayed over a standard workload's own
requests (Llama-3.1-8B shape), fitted to measured figures.

    python -P load-tests/ceiling/throughput_ceiling.py --device "NVIDIA H100 80GB HBM3" \
        --bandwidth-tbs 3.0 --matmul-tflops 790 --decode-b1-itl-ms 6.18 \
        --measured radixmesh=10682 --measured mini-sglang=10300 --source FILE.json

The per-step overhead is fitted to the measured decode-b1 median ITL (the time a batch-1 step
takes beyond reading the weights and its KV); the sustained GEMM rate of each measured run is
then the one at which the replay gives its figure. Ceilings are replayed with that overhead
and with none, at the device's best GEMM rate (`--matmul-tflops`), for each policy. The record
goes to load-tests/results/ as `throughput-ceiling-<workload>-<device>-<date>.json`.

`shared-prefix` requests form prefix groups (their common system prompt): a group's prefix is
computed once and then hit in the cache, and the replay runs with and without cascade
attention (each group's prefix read once per decode step). There the KV pool decides the
batch, so give the measured run's pool (`--kv-pool-tokens`); each measured run also gets the
replay with cascade at the GEMM rate fitted to it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from radixmesh.bench.ceiling import (
    LLAMA_8B,
    POLICIES,
    DeviceCosts,
    ReplayRequest,
    fit_matmul_rate,
    fit_overhead,
    replay,
)
from radixmesh.bench.results import DEFAULT_RESULTS_DIR, slugify, write_record
from radixmesh.bench.workloads import (
    DECODE_B1,
    SHARED_PREFIX_LENGTHS,
    Workload,
    WorkloadOptions,
    build_workload,
)


def replay_requests(workload: Workload) -> list[ReplayRequest]:
    """The workload's requests; shared-prefix's grouped by their system prompt."""
    shared = SHARED_PREFIX_LENGTHS[0] if workload.name == "shared-prefix" else 0
    return [ReplayRequest(len(req.input_ids), req.max_new_tokens,
                          hash(req.input_ids[:shared]) if shared else None, shared)
            for req in workload.requests]


# Why a fit finds no rate: the replay misses a saving the run has.
NOT_FITTED = ("none: the run beats the model at the device's best GEMM rate, so the model "
              "misses a saving the run has (for shared-prefix: prefix KV met again in the "
              "GPU's cache, or a larger batch than full-output reservation admits)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", required=True, help="the GPU the measured figures came from")
    parser.add_argument("--bandwidth-tbs", type=float, required=True,
                        help="sustained device-memory read bandwidth, TB/s")
    parser.add_argument("--matmul-tflops", type=float, required=True,
                        help="the best sustained bf16 GEMM rate on the device, TFLOP/s")
    parser.add_argument("--decode-b1-itl-ms", type=float, required=True,
                        help="measured decode-b1 median ITL on the device, ms")
    parser.add_argument("--measured", action="append", default=[], metavar="NAME=TOK_S",
                        help="a measured output tok/s of the workload (repeatable)")
    parser.add_argument("--source", action="append", default=[],
                        help="result file(s) the measured figures come from")
    parser.add_argument("--workload", default="sharegpt-like")
    parser.add_argument("--chunk-tokens", type=int, default=8192)
    parser.add_argument("--max-running", type=int, default=1024)
    parser.add_argument("--kv-pool-tokens", type=int, default=None,
                        help="the measured run's KV pool (default: unbounded)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    return parser.parse_args()


@dataclass(frozen=True)
class Setting:
    """A workload's requests on one device, with the scheduler's limits."""

    requests: list[ReplayRequest]
    bandwidth: float  # bytes/s
    best_rate: float  # FLOP/s
    overhead_s: float  # fitted per-step overhead
    limits: dict

    @property
    def grouped(self) -> bool:
        return any(req.prefix_group is not None for req in self.requests)

    def ceiling(self, policy: str, step_overhead_s: float, cascade: bool = False,
                rate: float | None = None) -> dict:
        run = replay(self.requests, LLAMA_8B,
                     DeviceCosts(self.best_rate if rate is None else rate, self.bandwidth,
                                 step_overhead_s),
                     policy=policy, cascade=cascade, **self.limits)
        return {"output_tok_s": round(run.output_tok_s), "seconds": round(run.seconds, 2),
                "kv_read_seconds": round(run.kv_seconds, 2),
                "steps": run.steps, "decode_steps": run.decode_steps,
                "mean_decode_batch": round(run.mean_decode_batch, 1)}

    def ceilings(self) -> dict:
        """Each policy's (and with prefix groups, each policy with cascade's) figure with the
        fitted overhead and with none."""
        return {policy + (" cascade" if cascade else ""): {
            "fitted_overhead": self.ceiling(policy, self.overhead_s, cascade),
            "no_overhead": self.ceiling(policy, 0.0, cascade)}
            for policy in POLICIES for cascade in ((False, True) if self.grouped else (False,))}

    def fit(self, figure: float, best: int) -> dict:
        """A measured figure: the GEMM rate that explains it and how far `best` is above."""
        rate = fit_matmul_rate(self.requests, LLAMA_8B, self.bandwidth, self.overhead_s,
                               figure, **self.limits)
        fit: dict = {"output_tok_s": figure, "ceiling_over_it": round(best / figure, 3)}
        if rate > self.best_rate:  # inf included: no rate the device has explains the figure
            return {**fit, "fitted_matmul_tflops": NOT_FITTED}
        fit["fitted_matmul_tflops"] = round(rate / 1e12)
        if self.grouped:
            fit["with_cascade_at_fitted_rate_tok_s"] = self.ceiling(
                "prefill-first", self.overhead_s, True, rate)["output_tok_s"]
        return fit


def main() -> None:
    args = parse_args()
    workload = build_workload(args.workload, WorkloadOptions(vocab_size=LLAMA_8B.vocab))
    bandwidth = args.bandwidth_tbs * 1e12
    b1_context = DECODE_B1[0] + DECODE_B1[1] // 2
    setting = Setting(
        replay_requests(workload), bandwidth, args.matmul_tflops * 1e12,
        fit_overhead(LLAMA_8B, bandwidth, args.decode_b1_itl_ms / 1e3, b1_context),
        {"chunk_tokens": args.chunk_tokens, "max_running": args.max_running,
         "kv_pool_tokens": args.kv_pool_tokens})
    ceilings = setting.ceilings()
    best = ceilings["prefill-first"]["no_overhead"]["output_tok_s"]
    measured = {name: setting.fit(float(figure), best)
                for name, figure in (item.split("=", 1) for item in args.measured)}
    record = {
        "what": f"upper bound on {args.workload} output tok/s on one GPU from a step-cost "
                "model (radixmesh/bench/ceiling.py) replayed over the workload's requests, "
                "Llama-3.1-8B shape, bf16; per-step overhead fitted to decode-b1",
        "device": args.device, "model": "llama-3.1-8b shape",
        "inputs": {"bandwidth_tbs": args.bandwidth_tbs, "matmul_tflops": args.matmul_tflops,
                   "decode_b1_itl_ms": args.decode_b1_itl_ms, **setting.limits,
                   "sources": args.source},
        "fitted_step_overhead_ms": round(setting.overhead_s * 1e3, 3),
        "weights_read_ms": round(LLAMA_8B.weight_bytes / bandwidth * 1e3, 3),
        "ceilings": ceilings, "measured": measured,
    }
    out = write_record(record, f"throughput-ceiling-{args.workload}-{slugify(args.device)}",
                       args.output_dir, sys.argv)
    print(out)
    for policy, cases in ceilings.items():
        print(policy, {case: figures["output_tok_s"] for case, figures in cases.items()})
    for name, figures in measured.items():
        print(name, figures)


if __name__ == "__main__":
    main()
