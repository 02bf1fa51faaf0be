"""Benchmark figures from request traces: pure functions, no clocks, no I/O.

Definitions (times in seconds inside, milliseconds in the reported figures):
- TTFT: first token's arrival minus the send time.
- ITL: the gap between two successive chunks of a request, shared equally among the tokens of
  the later chunk (a chunk of k tokens after a gap g counts k gaps of g / k), so a server that
  batches tokens into fewer messages is not credited with fewer, longer gaps.
- TPOT: (e2e - TTFT) / (output tokens - 1), for requests of at least two output tokens.
- Duration: first send to last token over the whole run; throughputs divide by it and count
  the tokens of completed requests. Total throughput adds their prompt tokens.
- Cache hit rate: sum(cached_tokens) / sum(prompt_tokens) from the server's usage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from radixmesh.bench.trace import RequestTrace


@dataclass(frozen=True, slots=True)
class Distribution:
    """Mean, median and 99th percentile in milliseconds; all None when there were no samples."""

    mean: float | None = None
    median: float | None = None
    p99: float | None = None

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Distribution:
        if len(values) == 0:
            return cls()
        ms = np.asarray(values, dtype=np.float64) * 1000.0
        return cls(float(ms.mean()), float(np.median(ms)), float(np.percentile(ms, 99)))


@dataclass(frozen=True)
class BenchMetrics:
    num_requests: int
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    cached_tokens: int
    request_throughput: float
    output_throughput: float
    total_throughput: float
    cache_hit_rate: float | None
    concurrency: float  # mean number of requests in flight: sum of e2e / duration
    ttft: Distribution
    itl: Distribution
    tpot: Distribution
    e2e: Distribution

    def to_dict(self) -> dict:
        """Flat keys, as in the result JSON: `median_ttft_ms`, `p99_itl_ms`, ..."""
        out = {name: value for name, value in asdict(self).items()
               if not isinstance(value, dict)}
        for name in ("ttft", "itl", "tpot", "e2e"):
            for stat, value in asdict(getattr(self, name)).items():
                out[f"{stat}_{name}_ms"] = value
        return out


def inter_token_latencies(trace: RequestTrace) -> list[float]:
    """The ITL samples of one request: one per output token after its first chunk."""
    gaps: list[float] = []
    for index in range(1, len(trace.chunk_times)):
        tokens = trace.chunk_tokens[index]
        gap = trace.chunk_times[index] - trace.chunk_times[index - 1]
        gaps.extend([gap / tokens] * tokens)
    return gaps


def time_per_output_token(trace: RequestTrace) -> float | None:
    ttft, e2e = trace.ttft, trace.e2e
    if ttft is None or e2e is None or trace.output_tokens < 2:
        return None
    return (e2e - ttft) / (trace.output_tokens - 1)


def run_duration(traces: Sequence[RequestTrace]) -> float:
    """First send to last token; 0 when nothing was streamed."""
    sends = [t.send_time for t in traces if t.send_time is not None]
    last_tokens = [t.chunk_times[-1] for t in traces if t.chunk_times]
    if not sends or not last_tokens:
        return 0.0
    return max(0.0, max(last_tokens) - min(sends))


def prompt_tokens_of(trace: RequestTrace) -> int:
    """The server's count where it reported one (it is the truth), else the workload's."""
    if trace.usage is not None and "prompt_tokens" in trace.usage:
        return int(trace.usage["prompt_tokens"])
    return trace.prompt_tokens


def cache_hit_rate(traces: Sequence[RequestTrace]) -> tuple[float | None, int]:
    """(hit rate, cached tokens) over the requests whose usage the server reported."""
    reported = [t.usage for t in traces if t.usage is not None]
    prompt = sum(int(usage.get("prompt_tokens", 0)) for usage in reported)
    cached = sum(int(usage.get("cached_tokens", 0)) for usage in reported)
    return (cached / prompt if prompt else None), cached


def summarize(traces: Sequence[RequestTrace]) -> BenchMetrics:
    done = [t for t in traces if t.succeeded]
    duration = run_duration(traces)
    input_tokens = sum(prompt_tokens_of(t) for t in done)
    output_tokens = sum(t.output_tokens for t in done)
    e2es = [t.e2e for t in done if t.e2e is not None]
    hit_rate, cached = cache_hit_rate(done)

    def per_second(amount: float) -> float:
        return amount / duration if duration > 0 else 0.0

    return BenchMetrics(
        num_requests=len(traces), completed=len(done), failed=len(traces) - len(done),
        duration_s=duration, total_input_tokens=input_tokens,
        total_output_tokens=output_tokens, cached_tokens=cached,
        request_throughput=per_second(len(done)),
        output_throughput=per_second(output_tokens),
        total_throughput=per_second(input_tokens + output_tokens),
        cache_hit_rate=hit_rate, concurrency=per_second(sum(e2es)),
        ttft=Distribution.of_seconds([t.ttft for t in done if t.ttft is not None]),
        itl=Distribution.of_seconds([gap for t in done for gap in inter_token_latencies(t)]),
        tpot=Distribution.of_seconds(
            [v for t in done if (v := time_per_output_token(t)) is not None]),
        e2e=Distribution.of_seconds(e2es))


def error_counts(traces: Sequence[RequestTrace]) -> dict[str, int]:
    """How many requests failed with each message, most frequent first."""
    counts = Counter(t.error for t in traces if t.error is not None)
    return dict(counts.most_common())
