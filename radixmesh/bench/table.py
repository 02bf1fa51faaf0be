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


def section(title: str, fill: str = "-") -> str:
    return f" {title} ".center(WIDTH, fill)


def _distribution(title: str, short: str, values: Distribution) -> list[str]:
    return [section(title),
            _line(f"Mean {short} (ms)", values.mean),
            _line(f"Median {short} (ms)", values.median),
            _line(f"P99 {short} (ms)", values.p99)]


def format_summary(workload: str, path: str, request_rate: float | None,
                   max_concurrency: int | None, metrics: BenchMetrics) -> str:
    """`request_rate` None: a closed loop, where each send waits for an earlier finish."""
    if request_rate is None:
        rate = "closed loop"
    else:
        rate = "inf" if math.isinf(request_rate) else f"{request_rate:g} req/s"
    hit_rate = None if metrics.cache_hit_rate is None else f"{metrics.cache_hit_rate:.4f}"
    lines = [
        section("radixmesh bench result", "="),
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


def _rate(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"


def _mean_p90(mean: float | None, p90: float | None) -> str:
    return " / ".join("n/a" if v is None else f"{v:.1f}" for v in (mean, p90))


def format_multiturn(metrics: dict, settings: dict) -> str:
    """`multiturn-long`'s own figures, printed under `format_summary`'s table."""
    tiers = [_line(f"Hit rate, {tier} tier", _rate(rate))
             for tier, rate in metrics["per_tier"].items()]
    rounds = [_line(f"Round {r['round']} ({r['completed']} req)",
                    _mean_p90(r["mean_ttft_ms"], r["p90_ttft_ms"]))
              for r in metrics["per_round"]]
    return "\n".join([
        section("multiturn-long"),
        _line("Clients x rounds", f"{settings['num_clients']} x {settings['num_rounds']}"),
        _line("New / output tokens per round",
              f"{settings['new_tokens_per_round']} / {settings['output_len']}"),
        _line("Most in flight (limit / seen)",
              f"{settings['max_concurrency']} / {metrics['max_in_flight']}"),
        _line("Mean TTFT round 1 (ms)", metrics["round_1_mean_ttft_ms"]),
        _line("Mean TTFT rounds 2-N (ms)", metrics["rounds_2_to_n_mean_ttft_ms"]),
        _line("P90 TTFT rounds 2-N (ms)", metrics["rounds_2_to_n_p90_ttft_ms"]),
        _line("Cache hit rate rounds 2-N", _rate(metrics["rounds_2_to_n_cache_hit_rate"])),
        _line("Ceiling hit rate", _rate(settings["ceiling_hit_rate"])),
        *(tiers or [_line("Hit rate per tier", metrics["per_tier_status"])]),
        section("TTFT by round, mean / p90 (ms)"),
        *rounds,
        "=" * WIDTH,
    ])
