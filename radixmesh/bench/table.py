"""The summary printed at the end of a run: one aligned label/value line per figure."""

from __future__ import annotations

import math

from radixmesh.bench.metrics import BenchMetrics, Distribution

WIDTH = 52
LABEL_WIDTH = 36


def _line(label: str, value: object) -> str:
    if value is None:
        shown = "n/a"
    elif isinstance(value, float):
        shown = f"{value:.2f}"
    else:
        shown = str(value)
    return f"{label + ':':<{LABEL_WIDTH}}{shown:>{WIDTH - LABEL_WIDTH}}"


def _section(title: str, fill: str = "-") -> str:
    return f" {title} ".center(WIDTH, fill)


def _distribution(title: str, short: str, values: Distribution) -> list[str]:
    return [_section(title),
            _line(f"Mean {short} (ms)", values.mean),
            _line(f"Median {short} (ms)", values.median),
            _line(f"P99 {short} (ms)", values.p99)]


def format_summary(workload: str, path: str, request_rate: float,
                   max_concurrency: int | None, metrics: BenchMetrics) -> str:
    rate = "inf" if math.isinf(request_rate) else f"{request_rate:g} req/s"
    hit_rate = None if metrics.cache_hit_rate is None else f"{metrics.cache_hit_rate:.4f}"
    lines = [
        _section("radixmesh bench result", "="),
        _line("Workload", workload),
        _line("Path", path),
        _line("Request rate", rate),
        _line("Max concurrency", max_concurrency if max_concurrency else "unlimited"),
        _line("Completed requests", f"{metrics.completed}/{metrics.num_requests}"),
        _line("Failed requests", metrics.failed),
        _line("Duration (s)", metrics.duration_s),
        _line("Input tokens", metrics.total_input_tokens),
        _line("Output tokens", metrics.total_output_tokens),
        _line("Request throughput (req/s)", metrics.request_throughput),
        _line("Output token throughput (tok/s)", metrics.output_throughput),
        _line("Total token throughput (tok/s)", metrics.total_throughput),
        _line("Mean concurrency", metrics.concurrency),
        _line("Cache hit rate", hit_rate),
        *_distribution("End-to-end latency", "E2E", metrics.e2e),
        *_distribution("Time to first token", "TTFT", metrics.ttft),
        *_distribution("Time per output token (after the 1st)", "TPOT", metrics.tpot),
        *_distribution("Inter-token latency", "ITL", metrics.itl),
        "=" * WIDTH,
    ]
    return "\n".join(lines)
