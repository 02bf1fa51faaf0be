"""`multiturn-long` end to end on the tiny model: through a real mesh (radix cache on, the
default) and through the in-process engine, at 3 clients x 3 rounds x 16 new ids x 4 out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from radixmesh.bench.multiturn import (
    ClosedLoop,
    MultiturnOptions,
    run_multiturn_on_engine,
    run_multiturn_on_mesh,
)
from radixmesh.bench.trace_breakdown import STAGES
from radixmesh.cli import main
from radixmesh.client import AsyncClient
from radixmesh.engine import Engine
from radixmesh.make_model import make_model
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.worker.config import WorkerConfig
from tests.bench.test_multiturn import SMALL, assert_prompts_extend_their_history
from tests.mesh.conftest import MeshProcess, free_port, start_mesh

GREEDY = {"temperature": 0.0, "ignore_eos": True}
SMALL_FLAGS = ["--num-clients", "3", "--num-rounds", "3", "--new-tokens-per-round", "16",
               "--output-len", "4", "--max-inflight", "2"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("multiturn-model") / "llama", "llama")


@pytest.fixture(scope="module")
def mesh(tiny_model: Path) -> Iterator[MeshProcess]:
    with start_mesh(tiny_model, worker="model") as running:
        yield running


def assert_a_good_run(loop: ClosedLoop, options: MultiturnOptions) -> None:
    """Every round done with its outputs fed back, hits from round 2 on, never over the limit."""
    assert all(turn.trace.succeeded for turn in loop.turns), [t.trace.error for t in loop.turns]
    assert all(len(turn.output_ids) == options.output_len for turn in loop.turns)
    assert_prompts_extend_their_history(loop)
    for turn in loop.turns:
        cached = turn.trace.usage["cached_tokens"]
        assert cached > 0 if turn.round > 1 else cached == 0
    traces = [turn.trace for turn in loop.turns]
    assert loop.max_in_flight <= options.max_inflight
    for trace in traces:  # as the client saw it: sends while this one was open
        assert sum(1 for other in traces
                   if other.send_time <= trace.send_time < other.end_time) <= 2


def test_mesh_rounds_feed_back_and_hit_the_cache(mesh: MeshProcess) -> None:
    async def drive() -> ClosedLoop:
        loop = ClosedLoop(SMALL)
        async with AsyncClient(mesh.grpc_address) as client:
            await run_multiturn_on_mesh(client, loop, GREEDY, progress=False)
        return loop
    assert_a_good_run(asyncio.run(drive()), SMALL)


def test_offline_rounds_feed_back_and_hit_the_cache(tiny_model: Path) -> None:
    engine = Engine(WorkerConfig(model_path=str(tiny_model), device="cpu"), SchedulerConfig())
    loop = ClosedLoop(SMALL)
    run_multiturn_on_engine(engine, loop, GREEDY, progress=False)
    assert_a_good_run(loop, SMALL)
    assert not engine.has_work


def test_cli_writes_a_multiturn_result(mesh: MeshProcess, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--workload", "multiturn-long", "--server", mesh.grpc_address,
                 *SMALL_FLAGS, "--metrics-url", f"{mesh.http_url}/metrics",
                 "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert "Mean TTFT rounds 2-N (ms):" in capsys.readouterr().out
    [path] = tmp_path.glob("multiturn-long-mesh-*.json")
    result = json.loads(path.read_text())
    assert (result["num_clients"], result["num_rounds"], result["max_concurrency"]) == (3, 3, 2)
    metrics = result["metrics"]
    assert metrics["completed"] == metrics["planned_requests"] == 9
    assert metrics["round_1_mean_ttft_ms"] > 0 and metrics["rounds_2_to_n_p90_ttft_ms"] > 0
    assert metrics["rounds_2_to_n_mean_ttft_ms"] > 0 and metrics["output_throughput"] > 0
    assert 0 < metrics["rounds_2_to_n_cache_hit_rate"] <= 1
    assert 0 < metrics["cache_hit_rate"] < metrics["rounds_2_to_n_cache_hit_rate"]
    assert [r["round"] for r in metrics["per_round"]] == [1, 2, 3]
    # Per tier, from the scheduler's counters at the front door: with no hierarchical cache
    # every hit is on the device, and the device hit rate is the overall one.
    per_tier = metrics["per_tier"]
    assert set(per_tier) == {"device", "host", "storage", "remote"}
    assert per_tier["host"] == per_tier["storage"] == per_tier["remote"] == 0
    assert per_tier["device"] == pytest.approx(metrics["cache_hit_rate"], abs=1e-3)


def test_a_too_long_last_round_fails_before_sending(mesh: MeshProcess,
                                                   capsys: pytest.CaptureFixture) -> None:
    # 3 rounds x 1000 new ids: past the tiny model's 2048-token context.
    assert main(["bench", "--workload", "multiturn-long", "--server", mesh.grpc_address,
                 "--num-rounds", "3", "--new-tokens-per-round", "1000", "--no-save",
                 "--no-progress"]) == 2
    assert "context length is 2048" in capsys.readouterr().err


def test_cli_breaks_each_round_down_by_stage_with_host_loads(
        tiny_model: Path, tmp_path: Path) -> None:
    """A traced mesh whose device pool holds one conversation at a time: later rounds load
    their history from host memory, and the breakdown shows it beside the usual stages."""
    endpoint = f"127.0.0.1:{free_port()}"
    with start_mesh(tiny_model, "--enable-trace", "--otlp-traces-endpoint", endpoint,
                    "--enable-hierarchical-cache", "--page-size", "4",
                    "--max-total-tokens", "80", worker="model") as traced:
        assert main(["bench", "--workload", "multiturn-long", "--server", traced.grpc_address,
                     *SMALL_FLAGS, "--metrics-url", f"{traced.http_url}/metrics",
                     "--trace-breakdown", endpoint, "--output-dir", str(tmp_path),
                     "--no-progress"]) == 0
    [path] = tmp_path.glob("multiturn-long-mesh-*.json")
    result = json.loads(path.read_text())
    breakdown = result["trace_breakdown"]
    assert breakdown["requests"] == breakdown["traced_requests"] == 9
    for stage in STAGES:
        assert breakdown["stages"][stage]["requests"] == 9, stage
    assert result["metrics"]["per_tier"]["host"] > 0
    assert breakdown["stages"]["hicache.load"]["requests"] > 0
