"""Issue 21's benchmark: `multiturn-long` through a router over several CPU meshes, once with
`--policy cache_aware` and once with `--policy round_robin`, and once on a single mesh with the
same total KV pool (the hit-rate baseline). Page fetch is off (no node is in a page index), so
a node serves from its own device and host tiers only. Writes ONE result JSON.

    python load-tests/router/multiturn_router.py                  # makes its model; ~10 min
    python load-tests/router/multiturn_router.py --model-path M --num-nodes 4 \\
        --pool-tokens 12288 --num-clients 8 --num-rounds 8 --new-tokens-per-round 128

Every arm starts fresh processes (empty caches): Redis, the nodes (`radixmesh up --node-id
node-i --registry-redis-url ...`, each with pool/num-nodes tokens) and the router, then runs
`radixmesh bench --workload multiturn-long --target ROUTER --metrics-url ROUTER/metrics`
(the router's /metrics adds up its nodes' tier counters; its GetServerInfo gives the spread).
The model's 4,096-token prefill is measured in-process first and recorded.

Targets (issue 21): cache_aware's device+host hit rate >= 0.95x the single mesh's, and its mean
TTFT over rounds 2..N at least 1.3x lower than round_robin's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from radixmesh.bench.local_meshes import local_mesh, local_redis, local_router
from radixmesh.bench.results import (
    DEFAULT_RESULTS_DIR,
    build_result,
    local_device,
    rounded,
    write_result,
)

MODEL_RECIPE = ("--hidden-size", "128", "--num-layers", "2", "--num-heads", "4",
                "--num-kv-heads", "2", "--intermediate-size", "384",
                "--max-position-embeddings", "8192")
PREFILL_TOKENS = 4096
PREFILL_TRIALS = 3
WORKLOAD = "router-multiturn"
POLICIES = ("cache_aware", "round_robin")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=Path, default=None,
                        help="default: a model made with " + " ".join(MODEL_RECIPE))
    parser.add_argument("--num-nodes", type=int, default=4)
    parser.add_argument("--pool-tokens", type=int, default=12288,
                        help="KV pool of the single mesh; each node gets it / --num-nodes")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--hicache-ratio", type=float, default=2.0,
                        help="host (L2) slots per device page, on every mesh")
    parser.add_argument("--num-clients", type=int, default=8)
    parser.add_argument("--num-rounds", type=int, default=8)
    parser.add_argument("--new-tokens-per-round", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--max-inflight", type=int, default=4)
    parser.add_argument("--mesh-args", default="", help="more flags for every `radixmesh up`")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    return parser.parse_args(argv)


def make_model(directory: Path) -> Path:
    path = directory / "router-bench-llama"
    subprocess.run([sys.executable, "-P", "-m", "radixmesh.cli", "make-model", str(path),
                    *MODEL_RECIPE], check=True, stdout=subprocess.DEVNULL)
    return path


def prefill_ms(model: Path, page_size: int) -> list[float]:
    """Wall time of a 4,096-token prefill (and one token out), in-process, per trial."""
    from radixmesh.engine import Engine
    from radixmesh.services.scheduler.config import SchedulerConfig
    from radixmesh.services.worker.config import WorkerConfig

    engine = Engine(WorkerConfig(model_path=str(model), device="cpu", page_size=page_size,
                                 max_total_tokens=2 * PREFILL_TOKENS), SchedulerConfig())
    rng = np.random.default_rng(0)
    times = []
    for _ in range(PREFILL_TRIALS):
        ids = rng.integers(5, 200, PREFILL_TOKENS).tolist()
        started = time.perf_counter()
        engine.generate([{"input_ids": ids, "max_new_tokens": 1, "temperature": 0.0}])
        times.append((time.perf_counter() - started) * 1e3)
    return times


def mesh_flags(args: argparse.Namespace, model: Path, pool: int) -> list[str]:
    return ["--model-path", str(model), "--page-size", str(args.page_size),
            "--max-total-tokens", str(pool), "--enable-hierarchical-cache",
            "--hicache-ratio", str(args.hicache_ratio), *args.mesh_args.split()]


def bench(args: argparse.Namespace, target: str, metrics_url: str, out: Path) -> dict:
    """One `radixmesh bench --workload multiturn-long` run; its result JSON."""
    out.mkdir(parents=True)
    command = [sys.executable, "-P", "-m", "radixmesh.cli", "bench", "--workload", "multiturn-long",
               "--target", target, "--metrics-url", metrics_url, "--no-progress",
               "--num-clients", str(args.num_clients), "--num-rounds", str(args.num_rounds),
               "--new-tokens-per-round", str(args.new_tokens_per_round),
               "--output-len", str(args.output_len), "--max-inflight", str(args.max_inflight),
               "--output-dir", str(out)]
    subprocess.run(command, check=False)
    [path] = out.glob("*.json")
    return json.loads(path.read_text())


@contextlib.contextmanager
def nodes_behind_router(args: argparse.Namespace, model: Path,
                        policy: str) -> Iterator[tuple[str, str]]:
    """Fresh nodes and a router; yields (the router's gRPC address, its /metrics)."""
    pool = args.pool_tokens // args.num_nodes
    with local_redis() as redis_url, contextlib.ExitStack() as stack:
        for index in range(args.num_nodes):
            stack.enter_context(local_mesh([
                *mesh_flags(args, model, pool), "--node-id", f"node-{index}",
                "--registry-redis-url", redis_url, "--registry-heartbeat", "0.5"]))
        router = stack.enter_context(local_router(
            ["--model-path", str(model), "--redis-url", redis_url, "--policy", policy],
            args.num_nodes))
        yield router.grpc_address, f"{router.http_url}/metrics"


def figures(result: dict) -> dict:
    """What the comparison needs from one arm's bench result."""
    metrics = result["metrics"]
    tiers = metrics.get("per_tier") or {}
    return {"hit_rate_device_host": tiers.get("device", 0.0) + tiers.get("host", 0.0),
            "per_tier": tiers, "usage_hit_rate": metrics["cache_hit_rate"],
            "rounds_2_to_n_mean_ttft_ms": metrics["rounds_2_to_n_mean_ttft_ms"],
            "round_1_mean_ttft_ms": metrics["round_1_mean_ttft_ms"],
            "completed": metrics["completed"], "planned": metrics["planned_requests"],
            "spread": result.get("node_spread"), "bench_command": result["command"]}


def run(args: argparse.Namespace) -> dict:
    arms: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="radixmesh-router-bench-") as tmp:
        root = Path(tmp)
        model = args.model_path or make_model(root)
        prefill = prefill_ms(model, args.page_size)
        print(f"{PREFILL_TOKENS}-token prefill: {', '.join(f'{t:.0f}' for t in prefill)} ms",
              flush=True)
        for policy in POLICIES:
            with nodes_behind_router(args, model, policy) as (target, metrics_url):
                arms[policy] = figures(bench(args, target, metrics_url, root / policy))
        with local_mesh(mesh_flags(args, model, args.pool_tokens)) as mesh:
            arms["one_mesh"] = figures(bench(args, mesh.grpc_address, mesh.metrics_url,
                                             root / "one_mesh"))
    cache, robin, one = arms["cache_aware"], arms["round_robin"], arms["one_mesh"]
    hit_ratio = (cache["hit_rate_device_host"] / one["hit_rate_device_host"]
                 if one["hit_rate_device_host"] else None)
    ttft_ratio = (robin["rounds_2_to_n_mean_ttft_ms"] / cache["rounds_2_to_n_mean_ttft_ms"]
                  if cache["rounds_2_to_n_mean_ttft_ms"] else None)
    return {"arms": arms, "prefill_4096_ms": prefill, "prefill_4096_min_ms": min(prefill),
            "hit_rate_vs_one_mesh": hit_ratio, "ttft_round_robin_over_cache_aware": ttft_ratio,
            "targets": {"hit_rate_vs_one_mesh >= 0.95": hit_ratio is not None
                        and hit_ratio >= 0.95,
                        "ttft_round_robin_over_cache_aware >= 1.3": ttft_ratio is not None
                        and ttft_ratio >= 1.3},
            "model": str(args.model_path) if args.model_path else "made here",
            "model_recipe": None if args.model_path else
            "radixmesh make-model OUT " + " ".join(MODEL_RECIPE)}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    figures_ = run(args)
    device = local_device(use_cuda=False)
    settings = {name: value for name, value in vars(args).items()
                if name not in ("output_dir", "model_path")}
    result = build_result(WORKLOAD, "router", device, [], rounded(figures_), **settings)
    result["command"] = shlex.join(["python", "load-tests/router/multiturn_router.py", *argv])
    for arm, values in figures_["arms"].items():
        spread = (values["spread"] or {}).get("requests_per_node", "-")
        print(f"{arm:<12} hit rate (device+host) {values['hit_rate_device_host']:.3f}  "
              f"TTFT rounds 2-{args.num_rounds} {values['rounds_2_to_n_mean_ttft_ms']:.1f} ms  "
              f"spread {spread}")
    print(f"targets: {figures_['targets']}")
    print(f"result: {write_result(result, args.output_dir, device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
