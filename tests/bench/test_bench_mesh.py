"""The mesh path against a real null-worker mesh (`radixmesh up --worker null`)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from radixmesh.bench.mesh_path import run_on_mesh
from radixmesh.bench.trace import RequestTrace
from radixmesh.bench.trace_breakdown import STAGES
from radixmesh.bench.workloads import (
    WARMUP_NEW_TOKENS,
    Workload,
    WorkloadOptions,
    build_workload,
    warmup_workload,
)
from radixmesh.cli import main
from radixmesh.client import AsyncClient
from radixmesh.make_model import make_model
from tests.mesh.conftest import MeshProcess, free_port, start_mesh

GREEDY = {"temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProcess]:
    model = make_model(tmp_path_factory.mktemp("bench-mesh-model") / "llama", "llama")
    with start_mesh(model, worker="null") as running:
        yield running


def run(mesh: MeshProcess, workload: Workload,
        max_concurrency: int | None = None) -> list[RequestTrace]:
    async def drive() -> list[RequestTrace]:
        async with AsyncClient(mesh.grpc_address) as client:
            return await run_on_mesh(client, workload, GREEDY, max_concurrency, progress=False)
    return asyncio.run(drive())


def test_every_stream_completes_with_its_tokens_and_usage(mesh: MeshProcess) -> None:
    workload = build_workload("null-worker", WorkloadOptions(
        vocab_size=100, num_prompts=64, scale=0.1, request_rate=400.0))
    traces = run(mesh, workload, max_concurrency=16)
    for request, trace in zip(workload.requests, traces, strict=True):
        assert trace.succeeded, trace.error
        assert trace.output_tokens == request.max_new_tokens == 26
        assert trace.usage["completion_tokens"] == 26
        assert trace.usage["prompt_tokens"] == len(request.input_ids) == 2
        assert trace.chunk_times == sorted(trace.chunk_times)
        assert sum(1 for other in traces
                   if other.send_time <= trace.send_time < other.end_time) <= 16


def test_rejected_requests_are_counted_as_failures(mesh: MeshProcess) -> None:
    # 128 * 20 prompt tokens: longer than the tiny model's 2048-token context.
    workload = build_workload("decode-b1", WorkloadOptions(vocab_size=100, num_prompts=2,
                                                           scale=20.0))
    traces = run(mesh, workload)
    assert all(t.error is not None and t.error.startswith("INVALID_ARGUMENT") for t in traces)


def bench_null_worker(mesh: MeshProcess, out: Path, num_prompts: int, *flags: str) -> dict:
    """`radixmesh bench --workload null-worker` against `mesh`: the one result JSON it wrote."""
    assert main([
        "bench", "--workload", "null-worker", "--server", mesh.grpc_address,
        "--num-prompts", str(num_prompts), "--scale", "0.1", *flags,
        "--output-dir", str(out), "--no-progress"]) == 0
    [path] = out.glob("null-worker-mesh-cpu-*.json")
    return json.loads(path.read_text())


def test_cli_writes_a_mesh_result(mesh: MeshProcess, tmp_path: Path) -> None:
    result = bench_null_worker(mesh, tmp_path, 40, "--device-label", "test box CPU")
    assert (result["path"], result["worker"], result["device"]) == ("mesh", "null",
                                                                    "test box CPU")
    assert result["metrics"]["completed"] == 40
    assert result["metrics"]["total_output_tokens"] == 40 * 26
    assert result["metrics"]["output_throughput"] > 0
    assert "node_spread" not in result  # one mesh, not a router: no spread over nodes


def test_cli_breaks_latency_down_by_stage_from_the_mesh_spans(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    model = make_model(tmp_path_factory.mktemp("traced-model") / "llama", "llama")
    with start_mesh(model, "--enable-trace", "--otlp-traces-endpoint", endpoint,
                    worker="null") as traced:
        assert main([
            "bench", "--workload", "null-worker", "--server", traced.grpc_address,
            "--num-prompts", "12", "--scale", "0.1", "--trace-breakdown", endpoint,
            "--output-dir", str(tmp_path), "--no-progress"]) == 0
    [path] = tmp_path.glob("null-worker-mesh-*.json")
    breakdown = json.loads(path.read_text())["trace_breakdown"]
    assert (breakdown["endpoint"], breakdown["requests"]) == (endpoint, 12)
    assert breakdown["traced_requests"] == 12
    for stage in STAGES:  # every request went through every stage once
        row = breakdown["stages"][stage]
        assert row["requests"] == 12, (stage, row)
        assert 0 <= row["median_ms"] <= row["p99_ms"]
    table = capsys.readouterr().out
    assert "Per-stage latency, from spans" in table and "Spans from 12 of 12" in table


def test_cli_says_so_when_no_span_arrives_and_keeps_its_figures(
        mesh: MeshProcess, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    endpoint = f"127.0.0.1:{free_port()}"  # the untraced mesh exports nothing there
    assert main([
        "bench", "--workload", "null-worker", "--server", mesh.grpc_address,
        "--num-prompts", "4", "--scale", "0.1", "--trace-breakdown", endpoint,
        "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert f"No spans of this run reached {endpoint}" in capsys.readouterr().out
    [path] = tmp_path.glob("null-worker-mesh-*.json")
    result = json.loads(path.read_text())
    assert result["metrics"]["completed"] == 4
    assert result["trace_breakdown"]["traced_requests"] == 0


def finished_requests(mesh: MeshProcess) -> float:
    """The front door's count of finished requests, from its /metrics."""
    with urllib.request.urlopen(f"{mesh.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "radixmesh:num_requests" for sample in family.samples
               if sample.name.endswith("_total"))


def test_warmup_requests_are_sent_first_and_left_out_of_the_figures(
        mesh: MeshProcess, tmp_path: Path) -> None:
    before = finished_requests(mesh)
    result = bench_null_worker(mesh, tmp_path, 10, "--warmup-requests", "3")
    assert result["warmup_requests"] == 3
    assert result["metrics"]["completed"] == 10
    assert finished_requests(mesh) - before == 13


def test_warmup_prompts_share_no_prefix_with_the_workload() -> None:
    workload = build_workload("decode-b1", WorkloadOptions(vocab_size=1000, num_prompts=4))
    warm_up = warmup_workload(workload, 2, vocab_size=1000, seed=1)
    assert len(warm_up.requests) == 2
    for request in warm_up.requests:
        assert len(request.input_ids) == len(workload.requests[0].input_ids)
        assert request.max_new_tokens == WARMUP_NEW_TOKENS
        assert all(request.input_ids[0] != timed.input_ids[0] for timed in workload.requests)
