"""`radixmesh bench`: runs a standard workload through the mesh or the in-process engine.

    radixmesh bench --workload sharegpt-like                  # a running mesh at --server
    radixmesh bench --workload sharegpt-like --target ROUTER  # ...or a router: + node spread
    radixmesh bench --workload sharegpt-like --path offline   # the same, in-process
    radixmesh bench --workload multiturn-long                 # closed loop: multiturn_cli.py
    radixmesh bench --workload cross-node --model-path M      # two meshes: cross_node.py
    radixmesh bench --workload online --trace-breakdown localhost:4318  # time per stage

Prints a summary table and writes the result JSON to load-tests/results/ (see results.py).
The ratio of the two paths' output throughputs on one workload is the cost of the mesh.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from radixmesh.bench.cross_node import (
    CROSS_NODE,
    add_cross_node_args,
    cross_node_problem,
    run_cross_node,
)
from radixmesh.bench.mesh_path import run_on_mesh
from radixmesh.bench.metrics import error_counts, summarize
from radixmesh.bench.multiturn import DEFAULTS, MULTITURN
from radixmesh.bench.multiturn_cli import add_multiturn_args, multiturn_problem, run_multiturn
from radixmesh.bench.node_spread import format_spread, node_spread, requests_per_node
from radixmesh.bench.offline_path import run_on_engine
from radixmesh.bench.results import (
    DEFAULT_RESULTS_DIR,
    Device,
    build_result,
    local_device,
    mesh_device,
    rounded,
    write_result,
)
from radixmesh.bench.table import format_summary
from radixmesh.bench.trace import RequestTrace
from radixmesh.bench.trace_breakdown import format_breakdown
from radixmesh.bench.trace_collector import TraceCollector
from radixmesh.bench.workloads import (
    FIRST_TOKEN_ID,
    WORKLOADS,
    Workload,
    WorkloadOptions,
    build_workload,
    warmup_workload,
)
from radixmesh.client import DEFAULT_ADDRESS, AsyncClient, RadixMeshClientError
from radixmesh.engine import Engine, add_engine_arguments, engine_configs_from_args


@dataclass
class CompletedRun:
    workload: Workload
    traces: list[RequestTrace]
    device: Device
    settings: dict  # what else the result JSON records about the run: model, worker, ...


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", required=True, choices=(*WORKLOADS, MULTITURN, CROSS_NODE))
    parser.add_argument("--path", choices=("mesh", "offline"), default="mesh",
                        help="mesh: a running mesh at --server; offline: the in-process engine")
    parser.add_argument("--server", "--target", dest="server", default=DEFAULT_ADDRESS,
                        help="gRPC address of the mesh, or of a router (then the result "
                             "records how its requests spread over the nodes)")
    parser.add_argument("--num-prompts", type=int, default=None,
                        help="number of requests (default: the workload's)")
    parser.add_argument("--request-rate", type=float, default=None,
                        help="requests per second, Poisson; inf sends all at once "
                             "(default: the workload's, 8 for online, else inf)")
    parser.add_argument("--max-concurrency", "--max-inflight", type=int, default=None,
                        help="most requests in flight at once (default: no limit; "
                             f"{MULTITURN}: {DEFAULTS['max_inflight']})")
    parser.add_argument("--seed", type=int, default=1, help="seeds lengths, token ids, arrivals")
    parser.add_argument("--warmup-requests", type=int, default=1,
                        help="requests sent first and left out of the figures (their prompts "
                             "share no prefix with the workload's); 0: none")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every length (a smaller run of the same shape)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="token ids are drawn in [5, vocab) (default: the model's)")
    parser.add_argument("--temperature", type=float, default=0.0, help="default: greedy")
    parser.add_argument("--disable-ignore-eos", action="store_true",
                        help="let requests stop at EOS (default: always run to max tokens)")
    parser.add_argument("--device-label", default=None,
                        help="the device recorded for a mesh run (default: this machine's)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--no-save", action="store_true", help="print only; write no JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--trace-breakdown", metavar="HOST:PORT", default=None,
                        help="listen for the mesh's OTLP spans at HOST:PORT (start it with "
                             "--enable-trace --otlp-traces-endpoint HOST:PORT) and print the "
                             "median and p99 time per stage: tokenize, queue, prefill, decode, "
                             "detokenize (mesh path only)")
    add_multiturn_args(parser)
    add_cross_node_args(parser)
    engine = parser.add_argument_group("engine flags (--path offline only)")
    add_engine_arguments(engine)


def workload_from_args(args: argparse.Namespace, model_vocab_size: int) -> Workload:
    options = WorkloadOptions(
        vocab_size=model_vocab_size if args.vocab_size is None else args.vocab_size, num_prompts=args.num_prompts,
        request_rate=args.request_rate, scale=args.scale, seed=args.seed)
    return build_workload(args.workload, options)


def sampling_from_args(args: argparse.Namespace) -> dict:
    return {"temperature": args.temperature, "ignore_eos": not args.disable_ignore_eos}


def run_offline(args: argparse.Namespace) -> CompletedRun:
    engine = Engine(*engine_configs_from_args(args))
    workload = workload_from_args(args, engine.info.vocab_size)
    if args.warmup_requests:
        warm_up = warmup_workload(workload, args.warmup_requests, engine.info.vocab_size,
                                  args.seed)
        report_warmup(run_on_engine(engine, warm_up, sampling_from_args(args), progress=False))
    traces = run_on_engine(engine, workload, sampling_from_args(args), args.max_concurrency,
                           progress=not args.no_progress)
    device = local_device(use_cuda=engine.runner.on_gpu)
    return CompletedRun(workload, traces, device, {"model": engine.info.model_id,
                                                   "worker": "model"})


async def run_mesh(args: argparse.Namespace,
                   spans: TraceCollector | None = None) -> CompletedRun:
    """`spans`, when given, hands out each request's traceparent."""
    async with AsyncClient(args.server) as client:
        info = await client.model_info()
        workload = workload_from_args(args, info.vocab_size)
        traceparents = None if spans is None else spans.traceparents(len(workload.requests))
        traces = await run_on_mesh(client, workload, sampling_from_args(args),
                                   args.max_concurrency, progress=not args.no_progress,
                                   traceparents=traceparents)
    device = mesh_device(args.device_label)
    return CompletedRun(workload, traces, device, {"model": info.model_id, "worker": info.worker,
                                                   "server": args.server})


def report_warmup(traces: list[RequestTrace]) -> None:
    """A failed warm-up is said, not fatal: the timed requests will show what is wrong."""
    for message, count in error_counts(traces).items():
        print(f"warm-up failed x{count}: {message}", file=sys.stderr)


async def warm_up_mesh(args: argparse.Namespace) -> None:
    """The warm-up requests, before any figure is taken (a router's per-node counts too) and
    before any traceparent is handed out: warm-up spans are no figure either."""
    async with AsyncClient(args.server) as client:
        info = await client.model_info()
        workload = workload_from_args(args, info.vocab_size)
        warm_up = warmup_workload(workload, args.warmup_requests, info.vocab_size, args.seed)
        report_warmup(await run_on_mesh(client, warm_up, sampling_from_args(args),
                                        progress=False))


def run_settings(args: argparse.Namespace, run: CompletedRun) -> dict:
    rate = run.workload.request_rate
    return {**run.settings, "num_prompts": len(run.workload.requests), "scale": args.scale,
            "request_rate": "inf" if math.isinf(rate) else rate,
            "max_concurrency": args.max_concurrency, "seed": args.seed,
            "warmup_requests": args.warmup_requests,
            "temperature": args.temperature, "ignore_eos": not args.disable_ignore_eos}


def check_args(args: argparse.Namespace) -> str | None:
    """The first thing wrong with the options, found before a model loads or a stream opens."""
    problem = multiturn_problem(args) or cross_node_problem(args)
    if problem is not None:
        return problem
    try:
        WorkloadOptions(vocab_size=FIRST_TOKEN_ID + 1 if args.vocab_size is None
                        else args.vocab_size,
                        num_prompts=args.num_prompts, request_rate=args.request_rate,
                        scale=args.scale, seed=args.seed)
        if args.warmup_requests < 0:
            raise ValueError("--warmup-requests must be >= 0")
        if args.max_concurrency is not None and args.max_concurrency < 1:
            raise ValueError("--max-concurrency must be >= 1")
        if args.trace_breakdown is not None:
            trace_breakdown_problem(args)
        if args.path == "offline":
            engine_configs_from_args(args)
    except ValueError as error:
        return str(error)
    return None


def trace_breakdown_problem(args: argparse.Namespace) -> None:
    """Raises ValueError if --trace-breakdown cannot work with the other options."""
    if args.path == "offline":
        raise ValueError("--trace-breakdown reads the spans a mesh exports; the offline path "
                         "makes none (drop --path offline)")
    host, _, port = args.trace_breakdown.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"--trace-breakdown takes HOST:PORT, the mesh's "
                         f"--otlp-traces-endpoint; got {args.trace_breakdown!r}")


def run_cli(args: argparse.Namespace) -> int:
    problem = check_args(args)
    if problem is not None:
        print(f"radixmesh bench: {problem}", file=sys.stderr)
        return 2
    spans = None
    if args.trace_breakdown is not None:
        try:  # before any request: the mesh exports from the first one on
            spans = TraceCollector(args.trace_breakdown).start()
        except ValueError as error:
            print(f"radixmesh bench: {error}", file=sys.stderr)
            return 2
    try:
        if args.workload == MULTITURN:  # a closed loop: prompts are built as rounds finish
            return run_multiturn(args, sampling_from_args(args), spans)
        if args.workload == CROSS_NODE:  # starts its own meshes
            return run_cross_node(args, sampling_from_args(args))
        return run_and_report(args, spans)
    finally:
        if spans is not None:
            spans.stop()


def run_and_report(args: argparse.Namespace, spans: TraceCollector | None) -> int:
    try:
        if args.path == "mesh" and args.warmup_requests:
            asyncio.run(warm_up_mesh(args))
        before = requests_per_node(args.server) if args.path == "mesh" else None
        run = run_offline(args) if args.path == "offline" else asyncio.run(run_mesh(args, spans))
    except RadixMeshClientError as error:  # only model_info(): a failed stream is a figure
        print(f"radixmesh bench: the mesh at {args.server} did not answer: {error}",
              file=sys.stderr)
        return 1
    metrics = summarize(run.traces)
    print(format_summary(run.workload.name, args.path, run.workload.request_rate,
                         args.max_concurrency, metrics))
    errors = error_counts(run.traces)
    for message, count in errors.items():
        print(f"failed x{count}: {message}", file=sys.stderr)
    extra = {}
    spread = node_spread(before, requests_per_node(args.server) if before else None)
    if spread is not None:  # the target is a router
        extra["node_spread"] = rounded(spread)
        print(format_spread(spread))
    if spans is not None:  # spans or none, the run's own figures stand
        extra["trace_breakdown"] = rounded(spans.report())
        print(format_breakdown(extra["trace_breakdown"], spans.address))
    if not args.no_save:
        result = build_result(run.workload.name, args.path, run.device, sys.argv,
                              rounded(metrics.to_dict()), **run_settings(args, run),
                              errors=errors, **extra)
        print(f"result: {write_result(result, args.output_dir, run.device)}")
    return 0 if metrics.completed else 1
