"""The decode step's cheap per-row path: stop rules resolved at arrival agree with check_stop,
decode pages are granted in one allocation exactly as one at a time would, and the context
length bounds what is planned ahead of results."""

from __future__ import annotations

import itertools

import pytest

from radixmesh.services.scheduler.kv_manager import KVManager
from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.prefix_cache import make_prefix_cache
from radixmesh.services.scheduler.request import SchedReq
from radixmesh.services.scheduler.stop_conditions import StopRule, check_stop
from radixmesh.shared.requests import FinishKind
from radixmesh.shared.sampling_params import SamplingParams
from tests.scheduler.driver import EOS, Driver, worker_info


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_the_stop_rule_flags_exactly_the_tokens_check_stop_ends_on(ignore_eos: bool) -> None:
    context_len, eos = 12, frozenset({EOS})
    for prompt_len, max_new, stop_ids in itertools.product((3, 9), (2, 5), ((), (7,))):
        sampling = SamplingParams(max_new_tokens=max_new, stop_token_ids=stop_ids,
                                  ignore_eos=ignore_eos)
        rule = StopRule.of(sampling, prompt_len, eos, context_len)
        for token, num_outputs in itertools.product((EOS, 7, 8), range(1, 6)):
            req = SchedReq("r", tuple(range(prompt_len)), sampling, 1,
                           output_ids=[8] * (num_outputs - 1) + [token])
            flagged = token in rule.token_ids or num_outputs >= rule.max_outputs
            assert flagged == (check_stop(req, eos, context_len) is not None), \
                (prompt_len, max_new, stop_ids, token, num_outputs)


def kv_manager(page_size: int) -> KVManager:
    allocator = PageAllocator(32)
    return KVManager(allocator, make_prefix_cache(False, page_size, allocator), page_size,
                     share_running_prefixes=True)


def test_decode_pages_are_granted_in_one_go_as_one_at_a_time_would() -> None:
    batched, alone = kv_manager(4), kv_manager(4)
    reqs = {kv: [SchedReq(f"r{i}", (1,), SamplingParams(), i) for i in range(5)]
            for kv in (batched, alone)}
    writes = batched.add_page_each(reqs[batched])
    assert writes == [alone.grow(req, 1) for req in reqs[alone]]
    assert [req.page_ids for req in reqs[batched]] == [[1], [2], [3], [4], [5]]
    assert batched.allocator.num_free == 32 - 5
    assert batched.add_page_each([SchedReq("big", (1,), SamplingParams(), 9)] * 28) is None
    assert batched.allocator.num_free == 32 - 5  # nothing taken


@pytest.mark.parametrize("pipelined", [False, True])
def test_decode_grants_one_page_per_page_size_tokens(pipelined: bool) -> None:
    driver = Driver(worker_info(num_pages=64, page_size=4))
    for i in range(3):
        driver.add(f"r{i}", [5 + i] * (3 + i), max_new_tokens=9)
    run = driver.run(pipelined=pipelined)
    assert all(len(tokens) == 9 for tokens in run.outputs.values())
    grants = [write for plan in run.plans if plan.decodes and not plan.extends
              for write in plan.page_writes]
    assert grants and all(len(write.page_ids) == 1 and write.start >= 1 for write in grants)
    # Prompts of 3, 4, 5 tokens and 9 outputs: KV of 11, 12, 13 tokens, 3, 3, 4 pages in all.
    granted = {rid: sum(1 for write in grants if write.rid == rid) for rid in run.outputs}
    assert granted == {"r0": 2, "r1": 2, "r2": 2}


@pytest.mark.parametrize("pipelined", [False, True])
def test_the_context_length_ends_a_request_and_bounds_planning(pipelined: bool) -> None:
    driver = Driver(worker_info(num_pages=64, context_len=10))
    driver.add("long", [5] * 6, max_new_tokens=20)
    run = driver.run(pipelined=pipelined)
    assert len(run.outputs["long"]) == 4
    assert run.finishes["long"].kind is FinishKind.LENGTH
    assert max(len(plan.decodes) for plan in run.plans) == 1
    assert sum(len(plan.decodes) for plan in run.plans) == 3  # the prefill drew the first


def test_decodes_that_share_a_prompt_prefix_sit_side_by_side_in_the_batch() -> None:
    """Interleaved arrivals of two system prompts: every decode step lists each prompt's
    requests together (the attention kernel then meets their shared KV in the GPU's cache)."""
    driver = Driver(worker_info(num_pages=256, page_size=4))
    systems = {"a": [11] * 8, "b": [12] * 8}
    driver.add("warm-a", systems["a"] + [1], max_new_tokens=1)
    driver.add("warm-b", systems["b"] + [1], max_new_tokens=1)
    driver.run()
    for i in range(6):  # a0 b1 a2 b3 a4 b5: arrival order interleaves the groups
        group = "ab"[i % 2]
        driver.add(f"{group}{i}", systems[group] + [20 + i, 30 + i], max_new_tokens=6)
    run = driver.run()
    steps = [plan.decodes for plan in run.plans if len(plan.decodes) == 6]
    assert steps
    for decodes in steps:
        groups = [rid[0] for rid in decodes]
        assert groups in (list("aaabbb"), list("bbbaaa")), decodes
