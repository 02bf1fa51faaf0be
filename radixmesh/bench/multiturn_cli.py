"""`radixmesh bench --workload multiturn-long`: its flags, its run on either path, its JSON.

    radixmesh bench --workload multiturn-long                 # §8: 32 clients x 8 rounds
    radixmesh bench --workload multiturn-long --num-clients 4 --num-rounds 3 \\
        --new-tokens-per-round 64 --output-len 16 --max-inflight 2   # a CPU-sized run

The server is started separately with the §8 pool (`radixmesh up --max-total-tokens 65536`,
with and without `--enable-hierarchical-cache`); the result records the pool it reported.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from typing import Protocol

from radixmesh.bench.metrics import BenchMetrics, error_counts, summarize
from radixmesh.bench.multiturn import (
    DEFAULTS,
    MULTITURN,
    ClosedLoop,
    MultiturnOptions,
    Turn,
    run_multiturn_on_engine,
    run_multiturn_on_mesh,
)
from radixmesh.bench.multiturn_report import multiturn_figures, scrape_tiers, tier_deltas
from radixmesh.bench.node_spread import format_spread, node_spread, requests_per_node
from radixmesh.bench.results import (
    Device,
    build_result,
    local_device,
    mesh_device,
    rounded,
    write_result,
)
from radixmesh.bench.table import format_multiturn, format_summary
from radixmesh.bench.trace_breakdown import format_breakdown
from radixmesh.bench.trace_collector import TraceCollector
from radixmesh.bench.workloads import FIRST_TOKEN_ID, scaled
from radixmesh.client import AsyncClient, RadixMeshClientError
from radixmesh.engine import Engine, engine_configs_from_args

FRONT_DOOR_HTTP_PORT = 30000  # `radixmesh up`'s default --port, where /metrics is served
_FLAGS = {"num_clients": "--num-clients", "num_rounds": "--num-rounds",
          "new_tokens_per_round": "--new-tokens-per-round", "output_len": "--output-len",
          "metrics_url": "--metrics-url"}


class ServerInfo(Protocol):
    """What both the mesh's ModelInfo and the engine's WorkerInfo tell about the server."""

    @property
    def model_id(self) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def context_len(self) -> int: ...
    @property
    def max_total_tokens(self) -> int: ...
    @property
    def page_size(self) -> int: ...


@dataclass
class MultiturnRun:
    options: MultiturnOptions
    loop: ClosedLoop
    device: Device
    settings: dict  # server facts for the JSON: model, worker, context and pool sizes
    tiers: dict[str, int]  # cached tokens per tier during the run; {} if none was counted
    tier_status: str       # "ok", "not exported" or "not scraped"
    spread: dict | None = None  # requests per node, when the target is a router


def add_multiturn_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        f"{MULTITURN} (a closed loop; defaults are design §8's; --max-inflight is "
        f"--max-concurrency, default {DEFAULTS['max_inflight']} here)")
    group.add_argument("--num-clients", type=int, default=None,
                       help=f"default {DEFAULTS['num_clients']}")
    group.add_argument("--num-rounds", type=int, default=None,
                       help=f"rounds per client (default {DEFAULTS['num_rounds']})")
    group.add_argument("--new-tokens-per-round", type=int, default=None,
                       help=f"fresh random ids per round (default {DEFAULTS['new_tokens']} "
                            "x --scale)")
    group.add_argument("--output-len", type=int, default=None,
                       help=f"tokens out per round (default {DEFAULTS['output_len']} x --scale)")
    group.add_argument("--metrics-url", default=None,
                       help="the front door's Prometheus text, read before and after for "
                            "per-tier hit rates (default: http://<--server host>:"
                            f"{FRONT_DOOR_HTTP_PORT}/metrics; mesh path only)")


def options_from_args(args: argparse.Namespace, vocab_size: int) -> MultiturnOptions:
    def pick(value: int | None, default: int, scale: float = 1.0) -> int:
        return value if value is not None else scaled(default, scale)
    return MultiturnOptions(
        vocab_size=vocab_size if args.vocab_size is None else args.vocab_size,
        num_clients=pick(args.num_clients, DEFAULTS["num_clients"]),
        num_rounds=pick(args.num_rounds, DEFAULTS["num_rounds"]),
        new_tokens=pick(args.new_tokens_per_round, DEFAULTS["new_tokens"], args.scale),
        output_len=pick(args.output_len, DEFAULTS["output_len"], args.scale),
        max_inflight=pick(args.max_concurrency, DEFAULTS["max_inflight"]), seed=args.seed)


def multiturn_problem(args: argparse.Namespace) -> str | None:
    """A flag given to the wrong workload, or a bad value, before anything starts."""
    if args.workload != MULTITURN:
        given = [flag for name, flag in _FLAGS.items() if getattr(args, name) is not None]
        return f"{', '.join(given)}: only for --workload {MULTITURN}" if given else None
    if args.num_prompts is not None or args.request_rate is not None:
        return (f"--num-prompts and --request-rate do not apply to {MULTITURN} (a closed "
                "loop): use --num-clients, --num-rounds and --max-inflight")
    try:
        options_from_args(args, FIRST_TOKEN_ID + 1 if args.vocab_size is None
                          else args.vocab_size)
    except ValueError as error:
        return str(error)
    return None


def checked_options(args: argparse.Namespace, info: ServerInfo) -> MultiturnOptions:
    """The options for this server; ValueError if the last round cannot fit its context."""
    options = options_from_args(args, info.vocab_size)
    problem = options.too_long_for(info.context_len, info.max_total_tokens)
    if problem is not None:
        raise ValueError(problem)
    return options


def server_settings(info: ServerInfo) -> dict:
    return {"model": info.model_id, "context_len": info.context_len,
            "max_total_tokens": info.max_total_tokens, "page_size": info.page_size}


def metrics_url(args: argparse.Namespace) -> str:
    host = args.server.rsplit(":", 1)[0] if ":" in args.server else args.server
    return args.metrics_url or f"http://{host}:{FRONT_DOOR_HTTP_PORT}/metrics"


async def run_mesh(args: argparse.Namespace, sampling: dict,
                   spans: TraceCollector | None = None) -> MultiturnRun:
    url = metrics_url(args)
    async with AsyncClient(args.server) as client:
        info = await client.model_info()
        options = checked_options(args, info)
        before, problem = await asyncio.to_thread(scrape_tiers, url)
        sent_before = await asyncio.to_thread(requests_per_node, args.server)
        loop = ClosedLoop(options)
        await run_multiturn_on_mesh(client, loop, sampling, progress=not args.no_progress,
                                    traceparent=spans and spans.next_traceparent)
        after, problem_after = await asyncio.to_thread(scrape_tiers, url)
        spread = node_spread(sent_before, sent_before and await asyncio.to_thread(
            requests_per_node, args.server))
    tiers = tier_deltas(before, after)
    if problem or problem_after:
        print(f"radixmesh bench: per-tier hit rates not scraped: {problem or problem_after}",
              file=sys.stderr)
    status = "not scraped" if problem or problem_after else "ok" if tiers else "not exported"
    settings = {**server_settings(info), "worker": info.worker, "server": args.server,
                "metrics_url": url}
    return MultiturnRun(options, loop, mesh_device(args.device_label), settings, tiers, status,
                        spread)


def run_offline(args: argparse.Namespace, sampling: dict) -> MultiturnRun:
    engine = Engine(*engine_configs_from_args(args))
    options = checked_options(args, engine.info)
    loop = ClosedLoop(options)
    run_multiturn_on_engine(engine, loop, sampling, progress=not args.no_progress)
    device = local_device(use_cuda=engine.runner.on_gpu)
    # No front door in-process, so no Prometheus text to read tiers from.
    return MultiturnRun(options, loop, device, {**server_settings(engine.info),
                                                "worker": "model"}, {}, "not scraped")


def result_parts(args: argparse.Namespace, run: MultiturnRun,
                 overall: BenchMetrics) -> tuple[dict, dict]:
    """(metrics, settings) of the result JSON: the common figures plus multiturn's own."""
    turns: list[Turn] = run.loop.turns
    options = run.options
    metrics = {**overall.to_dict(),
               **multiturn_figures(turns, options.num_rounds, run.tiers,
                                   overall.total_input_tokens),
               "per_tier_status": run.tier_status, "max_in_flight": run.loop.max_in_flight,
               "planned_requests": options.num_clients * options.num_rounds}
    settings = {**run.settings, "num_clients": options.num_clients,
                "num_rounds": options.num_rounds, "new_tokens_per_round": options.new_tokens,
                "output_len": options.output_len, "max_concurrency": options.max_inflight,
                "ceiling_hit_rate": options.ceiling_hit_rate, "scale": args.scale,
                "seed": args.seed, "temperature": args.temperature,
                "ignore_eos": not args.disable_ignore_eos}
    return rounded(metrics), rounded(settings)


def run_multiturn(args: argparse.Namespace, sampling: dict,
                  spans: TraceCollector | None = None) -> int:
    """`spans`, when given (mesh path only), traces every round and adds the breakdown."""
    try:
        run = run_offline(args, sampling) if args.path == "offline" \
            else asyncio.run(run_mesh(args, sampling, spans))
    except RadixMeshClientError as error:  # model_info() only: a failed stream is a figure
        print(f"radixmesh bench: the mesh at {args.server} did not answer: {error}",
              file=sys.stderr)
        return 1
    except ValueError as error:  # the last round would not fit the server's context
        print(f"radixmesh bench: {error}", file=sys.stderr)
        return 2
    traces = [turn.trace for turn in run.loop.turns]
    overall = summarize(traces)
    metrics, settings = result_parts(args, run, overall)
    print(format_summary(MULTITURN, args.path, None, run.options.max_inflight, overall))
    print(format_multiturn(metrics, settings))
    errors = error_counts(traces)
    for message, count in errors.items():
        print(f"failed x{count}: {message}", file=sys.stderr)
    extra = {}
    if run.spread is not None:  # the target is a router
        extra["node_spread"] = rounded(run.spread)
        print(format_spread(run.spread))
    if spans is not None:  # spans or none, the run's own figures stand
        extra["trace_breakdown"] = rounded(spans.report())
        print(format_breakdown(extra["trace_breakdown"], spans.address))
    if not args.no_save:
        result = build_result(MULTITURN, args.path, run.device, sys.argv, metrics,
                              **settings, errors=errors, **extra)
        print(f"result: {write_result(result, args.output_dir, run.device)}")
    return 0 if metrics["completed"] == metrics["planned_requests"] else 1
