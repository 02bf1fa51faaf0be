"""A fault-injection soak of `radixmesh up` on this machine (design.md §11, issue 17).

Starts the mesh, drives a steady closed-loop load over gRPC and the OpenAI HTTP API, and
injects a random fault every few seconds (soak_faults.py). Counts requests by outcome, faults
by kind, and writes `load-tests/results/soak-mesh-cpu-<UTC date>.json`. The verdict is
`lost == 0`: every request ended with its tokens or an error within its deadline + grace.

    python load-tests/soak/soak.py --duration 60     # what CI runs; the default is 600 s
    python load-tests/soak/soak.py --with-redis      # + the page index in a real Redis
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import random
import shlex
import sys
import time
from pathlib import Path

import soak_faults as faults
import soak_load as load
from soak_mesh import Mesh, redis_applicability, start_mesh
from soak_redis import SoakRedis, index_figures, soak_redis

from radixmesh.bench.results import Device, cpu_device, git_commit, rounded, write_result

HERE = Path(__file__).resolve().parent
FAULT_WEIGHTS = {"kill": 3, "stop-worker": 1, "slow-client": 1, "poison": 3, "redis-down": 2}
REDIS_FAULTS = {"redis-down"}  # injected only with --with-redis
RECOVERY_WAIT_S = 60.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--worker", choices=("null", "model"),
                        help="the null worker (no model math; the default) or the tiny model "
                        "on CPU (the default with --with-redis, which needs it)")
    parser.add_argument("--with-redis", action="store_true",
                        help="start a redis-server, run the mesh with the hierarchical cache "
                        "and its Redis page index, and inject redis-down faults")
    parser.add_argument("--redis-down-seconds", type=float, default=3.0,
                        help="how long a redis-down fault keeps Redis dead")
    parser.add_argument("--model-path", help="default: a tiny random model made for the run")
    parser.add_argument("--grpc-clients", type=int, default=2)
    parser.add_argument("--http-clients", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds past the deadline before a request counts as lost")
    parser.add_argument("--fault-interval", type=float, default=5.0,
                        help="mean seconds between faults (each wait is 0.5x to 1.5x)")
    parser.add_argument("--stop-seconds", type=float, default=3.0,
                        help="how long a SIGSTOP of the worker lasts")
    parser.add_argument("--faults", help=f"comma-separated kinds among "
                        f"{', '.join(FAULT_WEIGHTS)} (default: all; redis-down only with "
                        "--with-redis)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=HERE.parent / "results")
    parser.add_argument("--log-file", type=Path, help="where `up` and its services log")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if args.with_redis and args.worker == "null":
        parser.error("--with-redis needs --worker model: the null worker holds no KV, so no "
                     "page would reach the Redis index")
    args.worker = args.worker or ("model" if args.with_redis else "null")
    if args.faults is None:
        args.faults = ",".join(kind for kind in FAULT_WEIGHTS
                               if args.with_redis or kind not in REDIS_FAULTS)
    unknown = set(args.faults.split(",")) - set(FAULT_WEIGHTS) - {""}
    if unknown:
        parser.error(f"unknown --faults {', '.join(sorted(unknown))}")
    return args


async def run_soak(args: argparse.Namespace, mesh: Mesh, redis: SoakRedis | None = None) -> dict:
    rng = random.Random(args.seed)
    settings = load.LoadSettings(mesh.grpc_address, mesh.http_url, mesh.model,
                                 args.deadline, args.grace)
    target = faults.Target(mesh.process.pid, mesh.http_url, mesh.grpc_address, mesh.model,
                           mesh.context_len, args.deadline, args.grace, args.stop_seconds,
                           redis=redis, redis_down_seconds=args.redis_down_seconds)
    tally, log = load.Tally(), faults.FaultLog()
    start = time.monotonic()
    until = start + args.duration
    clients = [load.grpc_client(settings, tally, until, random.Random(rng.random()))
               for _ in range(args.grpc_clients)]
    clients += [load.http_client(settings, tally, until, random.Random(rng.random()))
                for _ in range(args.http_clients)]
    kinds = [kind for kind in args.faults.split(",") if kind]
    injector = asyncio.create_task(inject(target, kinds, until, args.fault_interval, rng, log))
    try:
        await asyncio.gather(*clients)
        elapsed = time.monotonic() - start
    finally:
        injector.cancel()
        await asyncio.gather(injector, *log.background, return_exceptions=True)
        for pid in list(log.stopped):
            faults.resume(log, pid)
    recovered = await _serves_again(settings, rng)
    return summarize(tally, log, start, elapsed, recovered)


async def inject(target: faults.Target, kinds: list[str], until: float, interval: float,
                 rng: random.Random, log: faults.FaultLog) -> None:
    weights = [FAULT_WEIGHTS[kind] for kind in kinds]
    while True:
        await asyncio.sleep(interval * rng.uniform(0.5, 1.5))
        if time.monotonic() >= until:
            return
        [kind] = rng.choices(kinds, weights)
        await faults.INJECTORS[kind](target, rng, log)


async def _serves_again(settings: load.LoadSettings, rng: random.Random) -> float | None:
    """Seconds after the load until a gRPC request succeeds (the mesh recovered from the last
    fault), or None if none does within RECOVERY_WAIT_S."""
    start = time.monotonic()
    while time.monotonic() - start < RECOVERY_WAIT_S:
        probe = load.Tally()
        await load.grpc_client(settings, probe, time.monotonic() + 0.01, rng)
        if probe.outcomes["ok"]:
            return time.monotonic() - start
        await asyncio.sleep(0.5)
    return None


def summarize(tally: load.Tally, log: faults.FaultLog, start: float, elapsed: float,
              recovered: float | None) -> dict:
    recovery: dict[str, list[float]] = {}
    for name, when in log.kills:
        done = tally.first_ok_after(when)
        recovery.setdefault(name, []).append(-1.0 if done is None else done - when)
    for event in log.events:
        event["at_s"] = round(event["at_s"] - start, 2)
    log.events.sort(key=lambda event: event["at_s"])
    return {
        "elapsed_s": elapsed,
        "requests": tally.summary(),
        "faults": {"total": sum(log.counts.values()), "by_kind": dict(sorted(log.counts.items())),
                   "poison_outcomes": {name: dict(counts) for name, counts in
                                       sorted(log.poison.items())},
                   "poison_unexpected": sum(n for counts in log.poison.values()
                                            for outcome, n in counts.items()
                                            if not faults.expected_rejection(outcome))},
        # seconds from each kill to the end of the first successful request sent after it
        # (-1: none before the load ended)
        "recovery_after_kill_s": {name: {"n": len(values), "max": max(values),
                                         "median": sorted(values)[len(values) // 2]}
                                  for name, values in sorted(recovery.items())},
        "serving_again_after_load_s": recovered,
        "lost_samples": tally.lost_samples,
        "fault_events": log.events,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "load-tests/soak/soak.py", *argv])
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(soak_redis()) if args.with_redis else None
        mesh = stack.enter_context(start_mesh(args, None if redis is None else redis.url))
        figures = asyncio.run(run_soak(args, mesh, redis))
        if redis is not None:
            figures["redis"] = {"restarts": redis.restarts, "down_s": redis.down_s,
                                "keys_at_end": redis.num_keys(),
                                "index": index_figures(mesh.hicache_metrics_url)}
        up = mesh.finish()
    if redis is None:
        figures["faults"]["not_applicable"] = {"redis-down": redis_applicability()}
    lost = figures["requests"]["lost"]
    verdict = "pass" if lost == 0 and up["stayed_up"] else "fail"
    result = {"workload": "soak", "path": "mesh-redis" if redis else "mesh", "device": "cpu",
              "device_label": cpu_device().label, "commit": git_commit(), "command": command,
              "date": date, "duration_s": args.duration, "worker": args.worker,
              "settings": {key: vars(args)[key] for key in (
                  "grpc_clients", "http_clients", "deadline", "grace", "fault_interval",
                  "stop_seconds", "faults", "seed", "with_redis", "redis_down_seconds")},
              "verdict": verdict, **rounded(figures, 3), "up": up}
    print(_report(result))
    if not args.no_save:
        print(f"wrote {write_result(result, args.output_dir, Device('cpu', 'cpu'))}")
    return 0 if verdict == "pass" else 1


def _report(result: dict) -> str:
    requests, fault_counts = result["requests"], result["faults"]
    return "\n".join([
        f"soak: {result['verdict']} ({result['elapsed_s']:.0f}s, {result['worker']} worker)",
        f"  requests {requests['total']}: ok {requests['ok']}, lost {requests['lost']}, "
        f"errors {requests['errors']}",
        f"  faults {fault_counts['total']}: {fault_counts['by_kind']}",
        f"  poisoned requests not rejected as 4xx: {fault_counts['poison_unexpected']}",
        *([f"  redis: {result['redis']}"] if "redis" in result else []),
        f"  up: {result['up']}"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
