"""The scheduler's choice between fetching pages another node holds and recomputing them:
estimated from the flags' speeds at first, then from what fetches and prefills measured."""

from __future__ import annotations

import time

import pytest

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.remote_decision import RemoteDecider
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import ExtendChunk, StepPlan

PAGE_BYTES, PAGE_SIZE = 1 << 20, 16  # 64 KiB of KV per token


def decider(policy: str = "auto", bandwidth_gbps: float = 2.0,
            tokens_per_s: float = 10_000.0) -> RemoteDecider:
    return RemoteDecider(policy, bandwidth_gbps, tokens_per_s, PAGE_BYTES, PAGE_SIZE)


def test_auto_fetches_only_where_the_link_beats_the_prefill() -> None:
    # 64 KiB/token at 10k tokens/s breaks even at 0.66 GB/s.
    assert decider(bandwidth_gbps=2.0).decide(100).fetch
    assert not decider(bandwidth_gbps=0.3).decide(100).fetch
    assert decider().break_even_bandwidth == pytest.approx(PAGE_BYTES / PAGE_SIZE * 10_000)


def test_the_flag_and_the_request_force_either_way() -> None:
    assert not decider("recompute").decide(100).fetch
    assert decider("recompute").decide(100, override="fetch").fetch
    forced = decider(bandwidth_gbps=2.0).decide(100, override="recompute")
    assert not forced.fetch and forced.why == "request"


def test_measured_fetches_and_prefills_move_the_estimates() -> None:
    remote = decider(bandwidth_gbps=2.0)
    for _ in range(20):  # fetches reach 0.1 GB/s only
        remote.fetched(100, 100 * PAGE_BYTES / 0.1e9)
    assert not remote.decide(100).fetch
    meter = remote.prefill
    meter.planned(1)
    time.sleep(0.2)  # 512 tokens in >= 0.2 s: at most 2,560 tokens/s
    meter.completed(StepPlan(1, extends=[ExtendChunk("r", 0, 512, True)]))
    assert meter.measured == 1 and meter.tokens_per_s < 10_000.0
    meter.planned(2)  # too few prompt tokens to say anything
    meter.completed(StepPlan(2, extends=[ExtendChunk("r", 512, 1, True)]))
    assert meter.measured == 1


def test_bad_policies_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="--hicache-remote-policy"):
        SchedulerConfig(hicache_remote_policy="sometimes")
    with pytest.raises(ValueError, match="--hicache-remote-timeout"):
        SchedulerConfig(hicache_remote_timeout=0)
    with pytest.raises(InvalidRequestError) as caught:
        SamplingParams(hicache_remote_policy="maybe").validate(vocab_size=100)
    assert caught.value.field == "hicache_remote_policy"
    SamplingParams(hicache_remote_policy="fetch").validate(vocab_size=100)
