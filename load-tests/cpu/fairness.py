"""Fairness on this CPU: how much one heavy request slows every other request.

Starts `radixmesh up` (null worker by default, so the mesh itself is measured), then runs the
same light workload (many short gRPC streams, fixed concurrency) alone and beside heavy
requests, round by round, and keeps the medians. A heavy request carries many long stop
strings that never match and asks for a long output: the detokenizer checks its stop strings
on every delta, so a slow matcher makes every request of the round wait for it.

    python load-tests/cpu/fairness.py --label after \
        --out load-tests/results/fairness-stop-strings-cpu-after.json

`slowdown` is the light workload's throughput alone over its throughput beside the heavy
ones: 1.0 is perfectly fair; the heavy streams' fair share is about
(light concurrency + heavy concurrency) / light concurrency. A heavy request the front door
refuses (over the stop-string limits) is counted as `refused` and slows nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from radixmesh.client import AsyncClient, RadixMeshClientError
from radixmesh.launcher.free_ports import pick_free_ports
from radixmesh.services.detokenizer.stop_strings import StopStringMatcher

HEAVY_SHAPES = ((16, 256), (1000, 256), (20000, 32))  # (stop strings, characters each)
NEVER = "\u2603"  # a character the tiny model's null-worker output never holds


def start_mesh(up_flags: list[str]) -> tuple[subprocess.Popen, str]:
    http_port, grpc_port = pick_free_ports(2)
    up = subprocess.Popen([sys.executable, "-P", "-m", "radixmesh.cli", "up", "--port",
                           str(http_port), "--grpc-port", str(grpc_port), *up_flags],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in up.stdout:
        if line.startswith("Press Ctrl-C"):
            return up, f"127.0.0.1:{grpc_port}"
    raise RuntimeError(f"radixmesh up exited ({up.wait()})")


def heavy_stops(output: str, count: int, length: int) -> list[str]:
    """Stop strings that never match but keep the matcher busy: each is a stretch of the
    output (which the null worker repeats) ending in a character it never produces, so at
    every point some suffix of the text is a long prefix of a stop and is held back."""
    span = len(output) - length
    return [output[index * span // count:][:length - 1] + NEVER for index in range(count)]


async def light_run(client: AsyncClient, requests: int, concurrency: int,
                    max_tokens: int) -> dict:
    latencies: list[float] = []
    tokens = 0
    queue = list(range(requests))

    async def one_stream() -> None:
        nonlocal tokens
        while queue:
            queue.pop()
            start = time.perf_counter()
            done = await client.complete(text="hello", max_new_tokens=max_tokens,
                                         ignore_eos=True, temperature=0)
            latencies.append(time.perf_counter() - start)
            tokens += len(done.token_ids)

    start = time.perf_counter()
    await asyncio.gather(*(one_stream() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"output_throughput": tokens / elapsed,
            "median_latency_ms": 1000 * statistics.median(latencies)}


async def heavy_loop(client: AsyncClient, stops: list[str], max_tokens: int,
                     outcome: dict) -> None:
    """Sends heavy requests back to back until cancelled."""
    while True:
        try:
            await client.complete(text="hello", max_new_tokens=max_tokens, ignore_eos=True,
                                  temperature=0, stop=stops)
            outcome["completed"] = outcome.get("completed", 0) + 1
        except RadixMeshClientError as error:
            outcome["refused"] = outcome.get("refused", 0) + 1
            outcome["error"] = f"{error.code}: {error.message[:120]}"
            await asyncio.sleep(0.05)


class RescanMatcher:
    """The matcher before issue 17, kept here as the baseline: every delta rescans each stop
    string over the held text, and tries every held length against every stop."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = tuple(dict.fromkeys(stop for stop in stops if stop))
        self._held = ""

    def feed(self, delta: str) -> None:
        text = self._held + delta
        if any(stop in text for stop in self._stops):
            raise AssertionError("the heavy stop strings never match")
        longest = min(len(text), max(len(stop) for stop in self._stops) - 1)
        keep = next((n for n in range(longest, 0, -1)
                     if any(stop.startswith(text[len(text) - n:]) for stop in self._stops)), 0)
        self._held = text[len(text) - keep:]


def matcher_cost_us(matcher: object, output: str, delta_chars: int = 4) -> float:
    """One stop-string matcher alone, in-process: microseconds per delta of the output."""
    deltas = [output[i:i + delta_chars] for i in range(0, len(output), delta_chars)]
    start = time.perf_counter()
    for delta in deltas:
        matcher.feed(delta)
    return 1e6 * (time.perf_counter() - start) / len(deltas)


def matcher_costs(output: str, stops: list[str], repeats: int = 5) -> dict:
    """Median microseconds per delta, the two matchers alternated; the automaton is built
    (and cached) before its clock starts, as the detokenizer builds it once per stop set."""
    StopStringMatcher(stops)
    before, after = [], []
    for _ in range(repeats):
        before.append(matcher_cost_us(RescanMatcher(stops), output))
        after.append(matcher_cost_us(StopStringMatcher(stops), output))
    return {"rescan_before": statistics.median(before),
            "automaton_after": statistics.median(after)}


async def measure(address: str, args: argparse.Namespace, shape: tuple[int, int]) -> dict:
    alone, beside, outcome = [], [], {}
    async with AsyncClient(address) as client:
        await client.wait_ready(30)
        sample = await client.complete(text="hello", max_new_tokens=args.heavy_max_tokens,
                                       ignore_eos=True, temperature=0)
        stops = heavy_stops(sample.text, *shape)
        matcher_us = matcher_costs(sample.text, stops)
        await light_run(client, args.concurrency, args.concurrency, args.max_tokens)  # warm-up
        for _ in range(args.rounds):
            alone.append(await light_run(client, args.requests, args.concurrency,
                                         args.max_tokens))
            heavies = [asyncio.create_task(heavy_loop(client, stops, args.heavy_max_tokens,
                                                      outcome))
                       for _ in range(args.heavy_concurrency)]
            await asyncio.sleep(0.2)
            beside.append(await light_run(client, args.requests, args.concurrency,
                                          args.max_tokens))
            for task in heavies:
                task.cancel()
            await asyncio.gather(*heavies, return_exceptions=True)
    alone_tps = statistics.median(run["output_throughput"] for run in alone)
    beside_tps = statistics.median(run["output_throughput"] for run in beside)
    return {"heavy": {"stop_strings": shape[0], "stop_string_length": shape[1],
                      "max_tokens": args.heavy_max_tokens,
                      "concurrency": args.heavy_concurrency, **outcome},
            "matcher_us_per_delta": matcher_us,
            "light_alone": {"output_throughput": alone_tps, "median_latency_ms":
                            statistics.median(run["median_latency_ms"] for run in alone)},
            "light_beside_heavy": {"output_throughput": beside_tps, "median_latency_ms":
                                   statistics.median(run["median_latency_ms"] for run in beside)},
            "slowdown": alone_tps / beside_tps}


def commit() -> str:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="e.g. before / after")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=64, help="light requests per run")
    parser.add_argument("--concurrency", type=int, default=16, help="light streams")
    parser.add_argument("--max-tokens", type=int, default=64, help="per light request")
    parser.add_argument("--heavy-concurrency", type=int, default=1)
    parser.add_argument("--heavy-max-tokens", type=int, default=1024)
    parser.add_argument("--up-flags", default="--worker null")
    parser.add_argument("--shapes", default=",".join(f"{n}x{m}" for n, m in HEAVY_SHAPES),
                        help="heavy stop-string shapes, COUNTxLENGTH,...")
    args = parser.parse_args()
    results = []
    for shape in (tuple(map(int, item.split("x"))) for item in args.shapes.split(",")):
        up, address = start_mesh(args.up_flags.split())
        try:
            results.append(asyncio.run(measure(address, args, shape)))
        finally:
            up.terminate()
            up.wait(30)
        print(json.dumps(results[-1]))
    record = {"workload": "fairness-stop-strings", "label": args.label, "device": "cpu",
              "cpu": platform.processor() or platform.machine(), "commit": commit(),
              "command": " ".join(["python", *sys.argv]),
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
