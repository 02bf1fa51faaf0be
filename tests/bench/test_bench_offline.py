"""The offline path end to end on the tiny model, with scaled-down workloads."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from radixmesh.bench.metrics import summarize
from radixmesh.bench.offline_path import run_on_engine
from radixmesh.bench.workloads import WorkloadOptions, build_workload
from radixmesh.engine import Engine
from radixmesh.make_model import make_model
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.worker.config import WorkerConfig

GREEDY = {"temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("bench-model") / "llama", "llama")


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[Engine]:
    """One engine for the module; whatever the runs did, no request or page may be left over."""
    engine = Engine(WorkerConfig(model_path=str(tiny_model), device="cpu"), SchedulerConfig())
    yield engine
    assert not engine.has_work
    engine.scheduler.check_integrity()


def test_cli_writes_a_valid_result(tiny_model: Path, tmp_path: Path) -> None:
    argv = ["bench", "--workload", "sharegpt-like", "--path", "offline", "--scale", "0.05",
            "--num-prompts", "20", "--model-path", str(tiny_model), "--device", "cpu",
            "--output-dir", str(tmp_path), "--no-progress"]
    done = subprocess.run([sys.executable, "-P", "-m", "radixmesh.cli", *argv], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Output token throughput (tok/s):" in done.stdout
    [path] = tmp_path.glob("sharegpt-like-offline-cpu-*.json")
    result = json.loads(path.read_text())
    assert result["workload"] == "sharegpt-like" and result["path"] == "offline"
    assert result["command"] == "radixmesh " + " ".join(argv)
    assert "CPU" in result["device"] and result["commit"] and result["date"]
    workload = build_workload("sharegpt-like", WorkloadOptions(
        vocab_size=model_vocab_size(tiny_model), num_prompts=20, scale=0.05))
    metrics = result["metrics"]
    assert (metrics["completed"], metrics["failed"]) == (20, 0)
    assert metrics["total_output_tokens"] == sum(r.max_new_tokens for r in workload.requests)
    assert metrics["total_input_tokens"] == sum(len(r.input_ids) for r in workload.requests)
    assert metrics["output_throughput"] > 0
    assert metrics["total_throughput"] > metrics["output_throughput"]
    for key in ("median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms"):
        assert metrics[key] > 0, key
    assert 0.0 <= metrics["cache_hit_rate"] <= 1.0


def model_vocab_size(model_path: Path) -> int:
    return json.loads((model_path / "config.json").read_text())["vocab_size"]


def test_arrivals_and_concurrency_are_respected(engine: Engine) -> None:
    workload = build_workload("sharegpt-like", WorkloadOptions(
        vocab_size=engine.info.vocab_size, num_prompts=12, scale=0.02, request_rate=100.0))
    traces = run_on_engine(engine, workload, GREEDY, max_concurrency=3, progress=False)
    assert all(t.succeeded for t in traces)
    first_send = traces[0].send_time
    for request, trace in zip(workload.requests, traces, strict=True):
        assert trace.send_time - first_send >= request.arrival_s - 1e-3, "sent before arrival"
        assert trace.output_tokens == request.max_new_tokens == trace.usage["completion_tokens"]
        in_flight = sum(1 for other in traces
                        if other.send_time <= trace.send_time < other.end_time)
        assert in_flight <= 3
    assert not engine.has_work


def test_a_shared_prefix_run_reports_cache_hits(tiny_model: Path) -> None:
    engine = Engine(WorkerConfig(model_path=str(tiny_model), device="cpu"), SchedulerConfig())
    workload = build_workload("shared-prefix", WorkloadOptions(
        vocab_size=engine.info.vocab_size, num_prompts=32, scale=0.05))
    # Prompts admitted in the same step cannot reuse each other's prefix: a concurrency limit
    # makes most prompts arrive after their group's system prompt is cached.
    traces = run_on_engine(engine, workload, GREEDY, max_concurrency=4, progress=False)
    metrics = summarize(traces)
    # Two groups of 16 behind a 102-token system prompt (6-token questions): at best
    # 30 * 102 of the 32 * 108 prompt tokens are cached.
    assert 0.5 < metrics.cache_hit_rate <= 30 * 102 / (32 * 108)
    assert metrics.cached_tokens == sum(t.usage["cached_tokens"] for t in traces)


def test_a_prompt_the_engine_rejects_is_a_failure_not_a_crash(engine: Engine) -> None:
    workload = build_workload("decode-b1", WorkloadOptions(
        vocab_size=engine.info.vocab_size, num_prompts=2, scale=0.05))
    traces = run_on_engine(engine, workload, {"temperature": -1.0}, progress=False)
    assert all(not t.succeeded and "temperature" in t.error for t in traces)
    assert not engine.has_work
