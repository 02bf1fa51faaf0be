"""The workloads of design §8, checked against the recipe computed another way."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radixmesh.bench.workloads import (
    FIRST_TOKEN_ID,
    WORKLOADS,
    WorkloadOptions,
    build_workload,
    request_body,
)

VOCAB = 512


def recipe_lengths() -> tuple[np.ndarray, np.ndarray]:
    """§8 from first principles: a lognormal draw is exp(mu + sigma * z) of a standard normal z,
    and numpy's generator takes the 1000 input z's before the 1000 output z's."""
    z = np.random.default_rng(1).standard_normal(2000)
    inputs = np.exp(math.log(226) - 0.5 + z[:1000])
    outputs = np.exp(math.log(188) - 0.5 + z[1000:])
    return (np.clip(np.rint(inputs), 4, 2048).astype(int),
            np.clip(np.rint(outputs), 4, 1024).astype(int))


def lengths_of(name: str, **options: object) -> tuple[list[int], list[int]]:
    workload = build_workload(name, WorkloadOptions(vocab_size=VOCAB, **options))
    return ([len(r.input_ids) for r in workload.requests],
            [r.max_new_tokens for r in workload.requests])


def test_sharegpt_like_lengths_follow_the_recipe_exactly() -> None:
    inputs, outputs = lengths_of("sharegpt-like")
    expected_inputs, expected_outputs = recipe_lengths()
    assert len(inputs) == len(outputs) == 1000
    assert inputs == expected_inputs.tolist()
    assert outputs == expected_outputs.tolist()
    # Pinned values, so a change of numpy's generator shows up here rather than in the figures.
    assert inputs[:5] == [194, 312, 191, 37, 339]
    assert outputs[:5] == [139, 264, 111, 249, 9]
    assert (sum(inputs), sum(outputs)) == (208149, 189803)


def test_sharegpt_like_lengths_are_clipped_to_their_ranges() -> None:
    inputs, outputs = lengths_of("sharegpt-like")
    assert min(inputs) >= 4 and max(inputs) == 2048 and inputs.count(2048) == 4
    assert min(outputs) >= 4 and max(outputs) == 1024 and outputs.count(1024) == 16


def test_fewer_prompts_are_a_prefix_of_the_full_workload() -> None:
    full = build_workload("sharegpt-like", WorkloadOptions(vocab_size=VOCAB))
    small = build_workload("sharegpt-like", WorkloadOptions(vocab_size=VOCAB, num_prompts=20))
    assert small.requests == full.requests[:20]


def test_workloads_are_deterministic_and_the_seed_changes_them() -> None:
    for name in WORKLOADS:
        options = WorkloadOptions(vocab_size=VOCAB, num_prompts=8, scale=0.1)
        assert build_workload(name, options) == build_workload(name, options)
    one = build_workload("null-worker", WorkloadOptions(vocab_size=VOCAB, num_prompts=4))
    two = build_workload("null-worker", WorkloadOptions(vocab_size=VOCAB, num_prompts=4, seed=2))
    assert one.requests[0].input_ids != two.requests[0].input_ids


def test_token_ids_are_in_the_vocabulary_and_clear_of_special_ids() -> None:
    workload = build_workload("sharegpt-like", WorkloadOptions(vocab_size=40, num_prompts=50))
    ids = [token for request in workload.requests for token in request.input_ids]
    assert min(ids) == FIRST_TOKEN_ID and max(ids) == 39


def test_scale_multiplies_every_length() -> None:
    inputs, outputs = lengths_of("sharegpt-like", scale=0.05)
    expected_inputs, expected_outputs = recipe_lengths()
    assert inputs == [max(1, round(n * 0.05)) for n in expected_inputs.tolist()]
    assert outputs == [max(1, round(n * 0.05)) for n in expected_outputs.tolist()]
    assert lengths_of("decode-b1", scale=0.5) == ([64], [256])


def test_fixed_length_workloads() -> None:
    assert lengths_of("decode-b1") == ([128], [512])
    inputs, outputs = lengths_of("null-worker")
    assert inputs == [16] * 1000 and outputs == [256] * 1000


def test_online_is_sharegpt_lengths_with_poisson_arrivals() -> None:
    online = build_workload("online", WorkloadOptions(vocab_size=VOCAB))
    sharegpt = build_workload("sharegpt-like", WorkloadOptions(vocab_size=VOCAB, num_prompts=500))
    assert online.request_rate == 8.0 and len(online.requests) == 500
    # Arrival gaps are drawn after the token ids: the prompts are those of sharegpt-like.
    assert [r.input_ids for r in online.requests] == [r.input_ids for r in sharegpt.requests]
    arrivals = [r.arrival_s for r in online.requests]
    assert arrivals[0] == 0.0 and arrivals == sorted(arrivals)
    mean_gap = arrivals[-1] / 499
    assert abs(mean_gap - 1 / 8) < 0.02  # 499 exponential gaps: the standard error is ~0.006
    assert all(r.arrival_s == 0.0 for r in sharegpt.requests)


def test_request_rate_overrides_the_workload_default() -> None:
    paced = build_workload("sharegpt-like", WorkloadOptions(VOCAB, num_prompts=10,
                                                            request_rate=2.0))
    assert paced.request_rate == 2.0 and paced.requests[-1].arrival_s > 0
    at_once = build_workload("online", WorkloadOptions(VOCAB, request_rate=math.inf))
    assert all(r.arrival_s == 0.0 for r in at_once.requests)


def test_shared_prefix_groups_share_a_system_prompt_and_are_shuffled() -> None:
    workload = build_workload("shared-prefix", WorkloadOptions(vocab_size=VOCAB))
    requests = workload.requests
    assert len(requests) == 1024
    assert {len(r.input_ids) for r in requests} == {2048 + 128}
    assert {r.max_new_tokens for r in requests} == {256}
    prefixes = [r.input_ids[:2048] for r in requests]
    assert sorted({prefixes.count(p) for p in prefixes}) == [16] and len(set(prefixes)) == 64
    assert len(set(prefixes[:16])) > 1, "the prompts of a group must not arrive together"
    assert len({r.input_ids for r in requests}) == 1024


def test_shared_prefix_with_fewer_prompts_keeps_the_group_size() -> None:
    workload = build_workload("shared-prefix", WorkloadOptions(VOCAB, num_prompts=40, scale=0.1))
    requests = workload.requests
    assert len(requests) == 40
    assert {len(r.input_ids) for r in requests} == {round(2048 * 0.1) + round(128 * 0.1)}
    assert len({r.input_ids[:205] for r in requests}) == 3  # ceil(40 / 16) groups


@pytest.mark.parametrize("options", [
    {"vocab_size": FIRST_TOKEN_ID}, {"vocab_size": VOCAB, "num_prompts": 0},
    {"vocab_size": VOCAB, "request_rate": 0.0}, {"vocab_size": VOCAB, "scale": 0.0}])
def test_bad_options_are_rejected(options: dict) -> None:
    with pytest.raises(ValueError):
        WorkloadOptions(**options)


def test_unknown_workload_is_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="multiturn-long"):
        build_workload("multiturn-long", WorkloadOptions(VOCAB))


def test_request_body_sends_ids_length_and_sampling() -> None:
    request = build_workload("decode-b1", WorkloadOptions(VOCAB)).requests[0]
    body = request_body(request, {"temperature": 0.0, "ignore_eos": True})
    assert body == {"input_ids": list(request.input_ids), "max_new_tokens": 512,
                    "temperature": 0.0, "ignore_eos": True}
