"""`radixmesh bench --workload cross-node` (design §8): two meshes ("nodes") sharing one Redis.

    radixmesh bench --workload cross-node --model-path M                  # §8: 32 x 4,096 in
    radixmesh bench --workload cross-node --model-path M --device cpu --dtype float32 \\
        --page-size 4 --input-len 512 --scale 0.25 --num-prompts 4         # a CPU-sized run

The bench starts everything itself: a redis-server (or uses --redis-url), node A and node B
(`radixmesh up` with the hierarchical cache over files, in the index), later node C (B's flags
without the index). Node A serves four sets of prompts; node B then serves one set per mode,
one request at a time: forced fetch, forced recompute (these two measure the link and the
prefill speed the decision then uses), and the decision on; node C serves the fourth (the
index off). Each mode gets prompts of its own, so no mode finds another's pages in B's cache.
Worker and scheduler flags given to the bench go to every node; --mesh-args adds others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from radixmesh.bench.local_meshes import LocalMesh, local_mesh, local_redis, scrape
from radixmesh.bench.mesh_path import run_on_mesh
from radixmesh.bench.multiturn_report import tier_counters
from radixmesh.bench.results import build_result, mesh_device, rounded, write_result
from radixmesh.bench.trace import RequestTrace
from radixmesh.bench.workloads import BenchRequest, Workload, random_ids, scaled
from radixmesh.client import AsyncClient
from radixmesh.engine import engine_configs_from_args
from radixmesh.launcher.mesh_plan import config_to_argv
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.worker.config import WorkerConfig

CROSS_NODE = "cross-node"
DEFAULTS = {"num_prompts": 32, "input_len": 4096, "output_len": 32}
MODES = ("fetch", "recompute", "auto")  # on node B, in this order
INDEX_OFF = "index_off"                 # node C
INDEX_WAIT_S = 300.0
HICACHE = "radixmesh:hicache_"


def add_cross_node_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(f"{CROSS_NODE} (starts its own meshes and Redis)")
    group.add_argument("--input-len", type=int, default=None,
                       help=f"prompt tokens before --scale (default {DEFAULTS['input_len']}; "
                            f"{DEFAULTS['output_len']} out, scaled alike)")
    group.add_argument("--redis-url", default=None,
                       help="the Redis both nodes share (default: a redis-server started here)")
    group.add_argument("--mesh-args", default="",
                       help="more flags for every node's `radixmesh up`, as one string")


def cross_node_problem(args: argparse.Namespace) -> str | None:
    if args.workload != CROSS_NODE:
        given = [flag for flag, value in (("--input-len", args.input_len),
                                           ("--redis-url", args.redis_url),
                                           ("--mesh-args", args.mesh_args)) if value]
        return f"{', '.join(given)}: only for --workload {CROSS_NODE}" if given else None
    if args.path != "mesh":
        return f"{CROSS_NODE} runs two meshes: drop --path offline"
    if args.input_len is not None and args.input_len < 2:
        return "--input-len must be >= 2"
    try:
        engine_configs_from_args(args)
        shlex.split(args.mesh_args)
    except ValueError as error:
        return str(error)
    return None


@dataclass
class ModeRun:
    traces: list[RequestTrace]
    tiers: dict[str, float]     # B's cached prompt tokens per tier during the mode
    hicache: dict[str, float]   # B's hicache counters' growth during the mode

    def figures(self) -> dict:
        done = [trace for trace in self.traces if trace.succeeded]
        prompt_tokens = sum(trace.prompt_tokens for trace in done)
        fetched_s = self.hicache.get("fetch_seconds_total", 0.0)
        return {"completed": len(done), "failed": len(self.traces) - len(done),
                "mean_ttft_s": float(np.mean([t.ttft for t in done])) if done else None,
                "prompt_tokens": prompt_tokens,
                "remote_tokens": int(self.tiers.get("remote", 0)),
                "fetched_fraction": self.tiers.get("remote", 0) / prompt_tokens
                if prompt_tokens else 0.0,
                "fetch_bandwidth_gbps": self.hicache.get("fetched_bytes_total", 0.0)
                / fetched_s / 1e9 if fetched_s > 0 else None,
                "fetch_fallbacks": int(self.hicache.get("fetch_fallbacks_total", 0))}


def _hicache_counters(url: str) -> dict[str, float]:
    return {sample.name.removeprefix(HICACHE): sample.value
            for family in text_string_to_metric_families(scrape(url))
            for sample in family.samples if sample.name.startswith(HICACHE)}


def _growth(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: value - before.get(name, 0.0) for name, value in after.items()}


def node_flags(args: argparse.Namespace, l3_dir: Path, node_id: str,
               redis_url: str | None, prefix: str) -> list[str]:
    worker, scheduler = engine_configs_from_args(args)
    flags = [*config_to_argv(worker, skip=WorkerConfig.SERVICE_FIELDS),
             *config_to_argv(scheduler, skip=SchedulerConfig.SERVICE_FIELDS)]
    if not scheduler.enable_hierarchical_cache:
        flags.append("--enable-hierarchical-cache")
    if scheduler.hicache_prefetch_policy == "best_effort":  # requests wait for L3's pages
        flags += ["--hicache-prefetch-policy", "wait_complete"]
    if scheduler.hicache_prefetch_threshold == SchedulerConfig.hicache_prefetch_threshold:
        # Every prompt asks the index, however short (--input-len 128 on CPU): whether its
        # pages are worth fetching is the decision's to say.
        flags += ["--hicache-prefetch-threshold", str(worker.page_size)]
    flags += ["--hicache-storage-backend", "file", "--hicache-storage-dir", str(l3_dir)]
    if redis_url is not None:
        flags += ["--node-id", node_id, "--hicache-redis-url", redis_url,
                  "--hicache-redis-key-prefix", prefix]
    return [*flags, *shlex.split(args.mesh_args)]


def prompt_sets(args: argparse.Namespace, vocab_size: int) -> list[list[BenchRequest]]:
    """Four sets of the same shape (seeded): three modes on B, one on C."""
    rng = np.random.default_rng(args.seed)
    count = args.num_prompts or DEFAULTS["num_prompts"]
    input_len = scaled(args.input_len or DEFAULTS["input_len"], args.scale)
    output_len = scaled(DEFAULTS["output_len"], args.scale)
    return [[BenchRequest(random_ids(rng, input_len, vocab_size), output_len)
             for _ in range(count)] for _ in range(len(MODES) + 1)]


async def _serve(mesh: LocalMesh, requests: list[BenchRequest], sampling: dict,
                 concurrency: int, progress: bool) -> list[RequestTrace]:
    async with AsyncClient(mesh.grpc_address) as client:
        return await run_on_mesh(client, Workload(CROSS_NODE, requests, float("inf")),
                                 sampling, concurrency, progress=progress)


def run_mode(mesh: LocalMesh, requests: list[BenchRequest], sampling: dict,
             progress: bool) -> ModeRun:
    tiers, hicache = tier_counters(scrape(mesh.metrics_url)), _hicache_counters(
        mesh.hicache_metrics_url)
    traces = asyncio.run(_serve(mesh, requests, sampling, 1, progress))
    return ModeRun(traces, _growth(tiers, tier_counters(scrape(mesh.metrics_url))),
                   _growth(hicache, _hicache_counters(mesh.hicache_metrics_url)))


def wait_indexed(a: LocalMesh, num_pages: int) -> None:
    """Until node A advertises at least `num_pages` pages (its L3 writes trail its steps)."""
    deadline = time.monotonic() + INDEX_WAIT_S
    while _hicache_counters(a.hicache_metrics_url).get("index_pages", 0) < num_pages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"node A advertises fewer than {num_pages} pages after "
                               f"{INDEX_WAIT_S:.0f} s")
        time.sleep(0.5)


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    with local_redis() as started:
        yield started


def run_nodes(args: argparse.Namespace, sampling: dict) -> tuple[dict[str, ModeRun], dict]:
    progress = not args.no_progress
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"  # a shared Redis may hold other runs' keys
    runs: dict[str, ModeRun] = {}
    with tempfile.TemporaryDirectory(prefix="radixmesh-cross-node-") as tmp, \
            _redis(args.redis_url) as redis_url:
        root = Path(tmp)
        with local_mesh(node_flags(args, root / "a", "node-a", redis_url, prefix)) as a, \
                local_mesh(node_flags(args, root / "b", "node-b", redis_url, prefix)) as b:
            info = asyncio.run(_model_info(a))
            sets = prompt_sets(args, info.vocab_size)
            everything = [request for group in sets for request in group]
            asyncio.run(_serve(a, everything, sampling, 4, progress))
            wait_indexed(a, sum((len(r.input_ids) - 1) // info.page_size for r in everything))
            for mode, requests in zip(MODES, sets, strict=False):
                runs[mode] = run_mode(b, requests, {**sampling, "hicache_remote_policy": mode},
                                      progress)
        with local_mesh(node_flags(args, root / "c", "node-c", None, prefix)) as c:
            runs[INDEX_OFF] = run_mode(c, sets[-1], sampling, progress)
    settings = {"model": info.model_id, "page_size": info.page_size,
                "num_prompts": len(sets[0]), "input_len": len(sets[0][0].input_ids),
                "output_len": sets[0][0].max_new_tokens, "scale": args.scale,
                "seed": args.seed, "mesh_args": args.mesh_args}
    return runs, settings


async def _model_info(mesh: LocalMesh):  # -> ModelInfo
    async with AsyncClient(mesh.grpc_address) as client:
        return await client.model_info()


def summary(runs: dict[str, ModeRun]) -> dict:
    """Per mode figures, and the break-even bandwidth: KV bytes per token (what B fetched)
    over recompute time per token (forced recompute's mean TTFT per prompt token, an upper
    bound: TTFT holds more than the prefill)."""
    modes = {mode: run.figures() for mode, run in runs.items()}
    fetched = runs["fetch"].hicache
    bytes_per_token = (fetched.get("fetched_bytes_total", 0.0)
                       / fetched["fetched_tokens_total"]
                       if fetched.get("fetched_tokens_total") else None)
    recompute = modes["recompute"]
    per_token_s = (recompute["mean_ttft_s"] * recompute["completed"]
                   / recompute["prompt_tokens"]
                   if recompute["mean_ttft_s"] and recompute["prompt_tokens"] else None)
    break_even = (bytes_per_token / per_token_s / 1e9
                  if bytes_per_token and per_token_s else None)
    return {"modes": modes, "kv_bytes_per_token": bytes_per_token,
            "break_even_bandwidth_gbps": break_even,
            "fetch_bandwidth_gbps": modes["fetch"]["fetch_bandwidth_gbps"]}


def format_cross_node(figures: dict) -> str:
    lines = [f"{'node B mode':<14}{'mean TTFT (ms)':>16}{'fetched':>10}{'fetch GB/s':>12}"
             f"{'ok':>6}"]
    for mode, values in figures["modes"].items():
        ttft = values["mean_ttft_s"]
        bandwidth = values["fetch_bandwidth_gbps"]
        lines.append(f"{mode:<14}{'-' if ttft is None else f'{ttft * 1e3:.1f}':>16}"
                     f"{values['fetched_fraction']:>10.1%}"
                     f"{'-' if bandwidth is None else f'{bandwidth:.3f}':>12}"
                     f"{values['completed']:>6}")
    even = figures["break_even_bandwidth_gbps"]
    lines.append(f"break-even bandwidth: {'-' if even is None else f'{even:.3f} GB/s'}")
    return "\n".join(lines)


def run_cross_node(args: argparse.Namespace, sampling: dict) -> int:
    try:
        runs, settings = run_nodes(args, sampling)
    except RuntimeError as error:
        print(f"radixmesh bench: {error}", file=sys.stderr)
        return 1
    figures = summary(runs)
    print(format_cross_node(figures))
    if not args.no_save:
        device = mesh_device(args.device_label)
        result = build_result(CROSS_NODE, "mesh", device, sys.argv, rounded(figures),
                              **settings)
        print(f"result: {write_result(result, args.output_dir, device)}")
    failed = sum(values["failed"] for values in figures["modes"].values())
    return 0 if failed == 0 else 1
