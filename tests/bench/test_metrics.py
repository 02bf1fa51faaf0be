"""Benchmark figures on hand-made timelines, and the result document around them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from radixmesh.bench.metrics import (
    Distribution,
    error_counts,
    inter_token_latencies,
    summarize,
    time_per_output_token,
)
from radixmesh.bench.results import (
    build_result,
    command_line,
    cpu_device,
    git_commit,
    labelled_device,
    write_record,
    write_result,
)
from radixmesh.bench.table import format_summary
from radixmesh.bench.trace import RequestTrace, flat_usage


def make_trace(send: float, chunks: list[tuple[float, int]], prompt: int = 10,
               cached: int = 0) -> RequestTrace:
    trace = RequestTrace(prompt_tokens=prompt, send_time=send)
    for at, tokens in chunks:
        trace.on_chunk(at, tokens)
    output = sum(tokens for _, tokens in chunks)
    trace.on_end(chunks[-1][0], {"prompt_tokens": prompt, "completion_tokens": output,
                                 "cached_tokens": cached}, {"type": "length"})
    return trace


def test_ttft_itl_tpot_e2e_of_one_request() -> None:
    # 1 token at 0.1 s, 1 at 0.3 s, then 3 tokens together at 0.6 s.
    trace = make_trace(0.0, [(0.1, 1), (0.3, 1), (0.6, 3)])
    assert trace.ttft == pytest.approx(0.1) and trace.e2e == pytest.approx(0.6)
    assert trace.output_tokens == 5
    # The 0.3 s gap before the 3-token chunk is shared among its tokens.
    assert inter_token_latencies(trace) == pytest.approx([0.2, 0.1, 0.1, 0.1])
    assert time_per_output_token(trace) == pytest.approx((0.6 - 0.1) / 4)


def test_chunks_without_tokens_are_not_gaps() -> None:
    trace = RequestTrace(prompt_tokens=4, send_time=1.0)
    trace.on_chunk(1.5, 1)
    trace.on_chunk(1.7, 0)  # a text-only message: no token arrived
    trace.on_chunk(2.0, 1)
    assert inter_token_latencies(trace) == pytest.approx([0.5])


def test_single_token_requests_have_no_tpot() -> None:
    assert time_per_output_token(make_trace(0.0, [(0.2, 1)])) is None


def test_summary_over_a_run() -> None:
    traces = [
        make_trace(0.0, [(0.1, 1), (0.3, 1), (0.6, 3)], prompt=10, cached=0),
        make_trace(0.2, [(0.5, 2), (1.0, 2)], prompt=30, cached=20),
        RequestTrace(prompt_tokens=99, send_time=0.1),
    ]
    traces[2].on_error(0.15, "INVALID_ARGUMENT: input_ids: too long")
    metrics = summarize(traces)
    assert (metrics.num_requests, metrics.completed, metrics.failed) == (3, 2, 1)
    assert metrics.duration_s == pytest.approx(1.0)  # first send 0.0, last token 1.0
    assert (metrics.total_input_tokens, metrics.total_output_tokens) == (40, 9)
    assert metrics.output_throughput == pytest.approx(9.0)
    assert metrics.total_throughput == pytest.approx(49.0)
    assert metrics.request_throughput == pytest.approx(2.0)
    assert metrics.cache_hit_rate == pytest.approx(20 / 40) and metrics.cached_tokens == 20
    assert metrics.concurrency == pytest.approx(0.6 + 0.8)
    # TTFTs 100 ms and 300 ms: numpy's linear p99 lies 99% of the way between them.
    assert metrics.ttft == Distribution(pytest.approx(200), pytest.approx(200),
                                        pytest.approx(298))
    # ITLs: 200, 100, 100, 100 ms from the first, 250, 250 from the second (gap 0.5 / 2).
    assert metrics.itl.mean == pytest.approx(1000 / 6)
    assert metrics.itl.median == pytest.approx(150)
    assert metrics.tpot.mean == pytest.approx((125 + 500 / 3) / 2)
    assert metrics.e2e.median == pytest.approx(700)
    assert error_counts(traces) == {"INVALID_ARGUMENT: input_ids: too long": 1}


def test_an_aborted_finish_is_a_failure() -> None:
    trace = RequestTrace(prompt_tokens=4, send_time=0.0)
    trace.on_chunk(0.1, 1)
    trace.on_end(0.2, None, {"type": "abort", "message": "worker lost"})
    assert not trace.succeeded and trace.error == "worker lost"
    metrics = summarize([trace])
    assert metrics.completed == 0 and metrics.output_throughput == 0.0


def test_nothing_streamed_gives_empty_figures_not_errors() -> None:
    metrics = summarize([])
    assert metrics.duration_s == 0.0 and metrics.output_throughput == 0.0
    assert metrics.ttft == Distribution() and metrics.cache_hit_rate is None


def test_metrics_dict_has_the_result_keys() -> None:
    metrics = summarize([make_trace(0.0, [(0.1, 1), (0.2, 1)])]).to_dict()
    for key in ("output_throughput", "total_throughput", "median_ttft_ms", "p99_ttft_ms",
                "median_itl_ms", "p99_itl_ms", "cache_hit_rate", "mean_tpot_ms",
                "median_tpot_ms", "p99_tpot_ms", "mean_e2e_ms", "median_e2e_ms", "p99_e2e_ms",
                "num_requests", "completed", "failed", "total_input_tokens",
                "total_output_tokens"):
        assert key in metrics, key
    assert metrics["median_itl_ms"] == pytest.approx(100)


def test_summary_table_shows_the_headline_figures() -> None:
    metrics = summarize([make_trace(0.0, [(0.1, 1), (0.3, 1)])])
    table = format_summary("decode-b1", "mesh", math.inf, None, metrics)
    assert re.search(r"Output token throughput \(tok/s\):\s+6\.67", table)
    assert re.search(r"Median ITL \(ms\):\s+200\.00", table)
    assert re.search(r"Request rate:\s+inf", table)
    assert len({len(line) for line in table.splitlines()}) == 1, "columns must line up"


def test_result_document_and_file(tmp_path: Path) -> None:
    device = labelled_device("NVIDIA H100 80GB HBM3")
    assert device.slug == "nvidia-h100-80gb-hbm3"
    result = build_result("decode-b1", "mesh", device,
                          ["/usr/bin/radixmesh", "bench", "--workload", "decode-b1"],
                          {"output_throughput": 1.0}, model="tiny")
    assert result["command"] == "radixmesh bench --workload decode-b1"
    assert result["device"] == "NVIDIA H100 80GB HBM3" and result["model"] == "tiny"
    assert re.fullmatch(r"[0-9a-f]{4,40}(-dirty)?|unknown", result["commit"])
    first = write_result(result, tmp_path, device)
    second = write_result(result, tmp_path, device)
    assert first != second, "a second run in the same second must not overwrite the first"
    assert first.name.startswith("decode-b1-mesh-nvidia-h100-80gb-hbm3-")
    assert json.loads(first.read_text()) == result


def test_a_load_tests_record_is_stamped_and_never_overwritten(tmp_path: Path) -> None:
    argv = ["load-tests/cpu/host_overhead.py", "--steps", "5", "--note", "a b"]
    first = write_record({"what": "x", "figures": [1]}, "host-overhead-cpu", tmp_path, argv)
    second = write_record({"what": "y"}, "host-overhead-cpu", tmp_path, argv, commit="abc1234")
    assert first != second and first.name.startswith("host-overhead-cpu-")
    record = json.loads(first.read_text())
    assert record["what"] == "x" and record["figures"] == [1]
    assert record["command"] == "python load-tests/cpu/host_overhead.py --steps 5 --note 'a b'"
    assert re.fullmatch(r"[0-9a-f]{4,40}(-dirty)?|unknown", record["commit"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", record["date"])
    assert json.loads(second.read_text())["commit"] == "abc1234"


def test_commit_and_devices_describe_this_checkout_and_machine(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"  # not a git checkout
    assert re.fullmatch(r"[0-9a-f]{4,40}(-dirty)?", git_commit())
    assert re.search(r"CPU, \d+ cores$", cpu_device().label) and cpu_device().slug == "cpu"
    assert command_line(["x", "bench", "a b"]) == "radixmesh bench 'a b'"


def test_usage_is_read_in_the_flat_and_the_openai_form() -> None:
    openai_form = {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34,
                   "prompt_tokens_details": {"cached_tokens": 20}}
    flat_form = {"prompt_tokens": 30, "completion_tokens": 4, "cached_tokens": 20}
    assert flat_usage(openai_form) == flat_usage(flat_form) == flat_form
    trace = RequestTrace(prompt_tokens=30, send_time=0.0)
    trace.on_chunk(0.1, 4)
    trace.on_end(0.1, openai_form, {"type": "length"})
    assert summarize([trace]).cache_hit_rate == pytest.approx(20 / 30)
