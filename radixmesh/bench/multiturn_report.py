"""The figures of `multiturn-long`: TTFT by round, prefix-cache hit rates overall and by tier.

Round 1 has nothing cached, so the headline TTFT is over rounds 2..N, where the history can be
served from the cache (or must be recomputed once evicted). Hit rates come from each response's
usage (cached prompt tokens / prompt tokens). Per-tier rates come from the server's own
counter `radixmesh:cached_tokens_total{tier=...}`, read from the front door's Prometheus
`/metrics` before and after the run; a server that does not export it gets `per_tier: {}`.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from radixmesh.bench.metrics import cache_hit_rate, summarize
from radixmesh.bench.multiturn import Turn
from radixmesh.bench.trace import RequestTrace

TIER_COUNTER = "radixmesh:cached_tokens_total"
SCRAPE_TIMEOUT_S = 5.0


def tier_counters(text: str) -> dict[str, float]:
    """The tier counter's value per `tier` label in Prometheus text; {} when it is absent.
    Samples of the same name without a `tier` label (an untiered total) are not tiers."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == TIER_COUNTER and "tier" in sample.labels:
                tier = sample.labels["tier"]
                values[tier] = values.get(tier, 0.0) + sample.value
    return values


def scrape_tiers(url: str | None) -> tuple[dict[str, float] | None, str | None]:
    """(counters per tier, None), or (None, why not) when there is no URL or no answer."""
    if not url:
        return None, "no --metrics-url"
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            return tier_counters(response.read().decode()), None
    except (OSError, ValueError, urllib.error.URLError) as error:
        return None, f"{url}: {error}"


def tier_deltas(before: dict[str, float] | None,
                after: dict[str, float] | None) -> dict[str, int]:
    """Cached tokens per tier during the run; {} unless both scrapes saw the counter."""
    if before is None or after is None:
        return {}
    return {tier: int(after[tier] - before.get(tier, 0.0)) for tier in sorted(after)}


def p90_ms(traces: Sequence[RequestTrace]) -> float | None:
    ttfts = [t.ttft for t in traces if t.succeeded and t.ttft is not None]
    return float(np.percentile(np.asarray(ttfts) * 1000.0, 90)) if ttfts else None


def round_figures(traces: Sequence[RequestTrace]) -> dict:
    """TTFT and hit rate of one group of rounds, from the same helpers as every workload."""
    done = [t for t in traces if t.succeeded]
    return {"completed": len(done), "mean_ttft_ms": summarize(traces).ttft.mean,
            "p90_ttft_ms": p90_ms(traces), "cache_hit_rate": cache_hit_rate(done)[0]}


def multiturn_figures(turns: Sequence[Turn], num_rounds: int, tier_tokens: dict[str, int],
                      prompt_tokens: int) -> dict:
    """The headline figures and one entry per round, as the result JSON records them."""
    by_round = [[t.trace for t in turns if t.round == r] for r in range(1, num_rounds + 1)]
    first, later = round_figures(by_round[0]), round_figures(
        [trace for traces in by_round[1:] for trace in traces])
    per_tier = {tier: tokens / prompt_tokens for tier, tokens in tier_tokens.items()} \
        if prompt_tokens else {}
    return {
        "round_1_mean_ttft_ms": first["mean_ttft_ms"],
        "rounds_2_to_n_mean_ttft_ms": later["mean_ttft_ms"],
        "rounds_2_to_n_p90_ttft_ms": later["p90_ttft_ms"],
        "rounds_2_to_n_cache_hit_rate": later["cache_hit_rate"],
        "per_tier": per_tier,
        "per_tier_cached_tokens": tier_tokens,
        "per_round": [{"round": r, **round_figures(traces)}
                      for r, traces in enumerate(by_round, start=1)],
    }
