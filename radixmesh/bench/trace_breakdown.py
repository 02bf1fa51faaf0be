"""Where a request's time went, per stage, from the spans the mesh exported (design §6).

Pure functions over `ReceivedSpan`s: no clocks, no I/O. A request's time in a stage is the
sum of its spans of that name in its trace (its `prefill` chunks add up; a retracted request
queues twice), so each request counts once per stage. The table gives, per stage, the median
and 99th percentile over the requests that had it, and how many did.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from radixmesh.bench.metrics import Distribution
from radixmesh.bench.span_receiver import ReceivedSpan
from radixmesh.bench.table import WIDTH, section

# In the order a request meets them.
STAGES = ("tokenize", "queue", "prefill", "decode", "detokenize")
# Only a mesh with --enable-hierarchical-cache makes these; rows for them appear when it did.
HICACHE_STAGES = ("hicache.prefetch", "hicache.load")


@dataclass(frozen=True, slots=True)
class RequestParent:
    """The parent span a benchmark request claims in its `traceparent` (a span that is never
    exported): the front door's root span for the request names it as its parent."""

    trace_id: str  # 32 hex
    span_id: str   # 16 hex

    @classmethod
    def new(cls) -> RequestParent:
        # Random ids, as the W3C spec asks; all-zero ids are invalid and practically never drawn.
        return cls(secrets.token_hex(16), secrets.token_hex(8))

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"  # 01: sampled


def stage_seconds(spans: Iterable[ReceivedSpan],
                  trace_ids: Collection[str]) -> dict[str, dict[str, float]]:
    """{stage: {trace id: seconds in that stage}} over the spans of `trace_ids`."""
    wanted = set(trace_ids)
    seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for span in spans:
        if span.name in STAGES + HICACHE_STAGES and span.trace_id in wanted:
            seconds[span.name][span.trace_id] += span.duration_s
    return {stage: dict(seconds[stage]) for stage in STAGES + HICACHE_STAGES
            if stage in seconds}


def breakdown(spans: Iterable[ReceivedSpan], trace_ids: Collection[str]) -> dict:
    """The `trace_breakdown` of a result: per stage `requests`, `median_ms`, `p99_ms`; and how
    many of the requests' traces sent any span at all."""
    spans = list(spans)
    wanted = set(trace_ids)
    seen = {span.trace_id for span in spans if span.trace_id in wanted}
    stages = {}
    for stage, by_trace in stage_seconds(spans, wanted).items():
        values = Distribution.of_seconds(list(by_trace.values()))
        stages[stage] = {"requests": len(by_trace), "median_ms": values.median,
                         "p99_ms": values.p99}
    return {"requests": len(wanted), "traced_requests": len(seen), "stages": stages}


def format_breakdown(result: dict, endpoint: str) -> str:
    """The table printed under the summary; a plain sentence when no span came back."""
    title = section("Per-stage latency, from spans")
    if not result["traced_requests"]:
        return "\n".join([title, *no_spans_message(endpoint).splitlines(), "=" * WIDTH])
    lines = [title, f"{'Stage':<14}{'Requests':>10}{'Median (ms)':>14}{'P99 (ms)':>14}"]
    present = [stage for stage in HICACHE_STAGES if stage in result["stages"]]
    for stage in (*STAGES, *present):
        row = result["stages"].get(stage)
        if row is None:
            lines.append(f"{stage:<14}{0:>10}{'n/a':>14}{'n/a':>14}")
        else:
            lines.append(f"{stage:<14}{row['requests']:>10}{row['median_ms']:>14.2f}"
                         f"{row['p99_ms']:>14.2f}")
    lines.append(f"Spans from {result['traced_requests']} of {result['requests']} requests.")
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def no_spans_message(endpoint: str) -> str:
    return (f"No spans of this run reached {endpoint}. Was the mesh started with\n"
            f"--enable-trace --otlp-traces-endpoint {endpoint}?")
