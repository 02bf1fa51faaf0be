"""The step-cost replay behind load-tests/ceiling: its arithmetic on cases small enough to
work out by hand, and its fits recovering what produced a figure."""

from __future__ import annotations

import math

import pytest

from radixmesh.bench.ceiling import (
    LLAMA_8B,
    DeviceCosts,
    ModelShape,
    ReplayedRequest,
    ReplayRequest,
    ReplayStep,
    decode_step_seconds,
    fit_matmul_rate,
    fit_overhead,
    replay,
)

TINY = ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128,
                  vocab=1000)
# Memory-bound everywhere: 1 byte/s of FLOPs would never win against bytes at this rate.
MEMORY_BOUND = DeviceCosts(matmul_flops=1e30, bandwidth=1e9, step_overhead_s=1e-3)


def test_llama_8b_costs_are_its_known_sizes() -> None:
    assert LLAMA_8B.kv_bytes_per_token == 128 * 1024
    # 8.03B parameters, less the embedding table (a step reads only its rows), in bf16
    assert LLAMA_8B.weight_bytes == pytest.approx(2 * (8.03e9 - 128256 * 4096), rel=0.01)
    assert LLAMA_8B.flops_per_token == pytest.approx(2 * 6.98e9, rel=0.01)


def test_one_request_costs_its_prefill_step_and_one_decode_step_per_later_token() -> None:
    prompt, output = 10, 4
    run = replay([(prompt, output)], TINY, MEMORY_BOUND)
    weights = TINY.weight_bytes / MEMORY_BOUND.bandwidth
    kv = sum(prompt + generated for generated in range(1, output)) * TINY.kv_bytes_per_token
    expected = output * (weights + MEMORY_BOUND.step_overhead_s) + kv / MEMORY_BOUND.bandwidth
    assert run.steps == output and run.decode_steps == output - 1
    assert run.seconds == pytest.approx(expected)


def test_prefill_first_decodes_nothing_while_a_prompt_waits_and_mixed_always_decodes() -> None:
    requests = [(10, 5)] * 3
    first = replay(requests, TINY, MEMORY_BOUND, chunk_tokens=10, policy="prefill-first")
    mixed = replay(requests, TINY, MEMORY_BOUND, chunk_tokens=12, policy="mixed")
    assert first.steps == 3 + 4  # three prefill steps, then the four later tokens together
    assert first.mean_decode_batch == 3
    assert mixed.decode_steps == mixed.steps - 1  # only the very first step has no decode


def test_max_running_holds_requests_back() -> None:
    requests = [(10, 5)] * 4
    one_at_a_time = replay(requests, TINY, MEMORY_BOUND, max_running=1)
    alone = replay(requests[:1], TINY, MEMORY_BOUND)
    assert one_at_a_time.steps == 4 * alone.steps
    assert one_at_a_time.seconds == pytest.approx(4 * alone.seconds)
    assert replay(requests, TINY, MEMORY_BOUND).seconds < one_at_a_time.seconds


def test_fits_recover_what_made_the_figures() -> None:
    itl = decode_step_seconds(LLAMA_8B, DeviceCosts(1e30, 3e12, 1.2e-3), 1, 384)
    assert fit_overhead(LLAMA_8B, 3e12, itl, 384) == pytest.approx(1.2e-3)
    requests = [(200 + 37 * i % 500, 50 + 13 * i % 200) for i in range(64)]
    device = DeviceCosts(500e12, 3e12, 1e-3)
    figure = replay(requests, LLAMA_8B, device, chunk_tokens=2048).output_tok_s
    rate = fit_matmul_rate(requests, LLAMA_8B, 3e12, 1e-3, figure, chunk_tokens=2048)
    assert rate == pytest.approx(500e12, rel=0.01)


def test_throughput_never_falls_as_the_device_gets_faster() -> None:
    requests = [(300, 100)] * 32 + [(50, 400)] * 4
    figures = [replay(requests, LLAMA_8B, DeviceCosts(rate, 3e12, 1e-3)).output_tok_s
               for rate in (100e12, 300e12, 600e12, 1e15)]
    assert figures == sorted(figures) and math.isfinite(figures[-1])
    with pytest.raises(ValueError, match="unknown policy"):
        replay(requests, LLAMA_8B, DeviceCosts(1e15, 3e12), policy="lof")


def test_a_computed_shared_prefix_is_skipped_and_cascade_reads_it_once() -> None:
    group = [ReplayRequest(100, 3, "g", 96) for _ in range(4)]
    alone = replay([(100, 3)] * 4, TINY, MEMORY_BOUND, chunk_tokens=100)
    shared = replay(group, TINY, MEMORY_BOUND, chunk_tokens=100)
    # The first prompt is computed whole; the other three only past the prefix, in one step.
    assert alone.steps == 4 + 2 and shared.steps == 2 + 2
    step = ReplayStep(decodes=[ReplayedRequest(100, 3, "g", 96, generated=1) for _ in range(4)])
    assert step.kv_tokens_read(cascade=False) == 4 * 101
    assert step.kv_tokens_read(cascade=True) == 96 + 4 * 5
    flat = replay(group, TINY, MEMORY_BOUND, chunk_tokens=100)
    assert replay(group, TINY, MEMORY_BOUND, chunk_tokens=100, cascade=True).seconds \
        < flat.seconds


def test_the_kv_pool_holds_requests_back_and_a_shared_prefix_counts_once() -> None:
    group = [ReplayRequest(100, 10, "g", 96) for _ in range(4)]
    # 96 shared + 4 x (4 own + 10 out) = 152 tokens: all fit in 152, one at a time in 110.
    roomy = replay(group, TINY, MEMORY_BOUND, kv_pool_tokens=152)
    tight = replay(group, TINY, MEMORY_BOUND, kv_pool_tokens=110)
    assert roomy.mean_decode_batch > 3 and tight.mean_decode_batch == 1
