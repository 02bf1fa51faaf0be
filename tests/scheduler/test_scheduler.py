"""The scheduler against the null worker: admission, chunking, limits, retraction, aborts."""

from __future__ import annotations

import pytest

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.requests import FinishKind
from tests.scheduler.driver import EOS, Driver, worker_info


def test_every_request_completes_with_its_tokens():
    driver = Driver(worker_info(num_pages=512))
    for i in range(10):
        driver.add(f"r{i}", list(range(3, 3 + 5 + i)), max_new_tokens=4 + i)
    run = driver.run()
    for i in range(10):
        assert run.outputs[f"r{i}"] == driver.expected_output(4 + i)
        assert run.finishes[f"r{i}"].kind is FinishKind.LENGTH


def test_chunked_prefill_splits_long_prompts_within_the_budget():
    driver = Driver(worker_info(num_pages=512, page_size=4), chunked_prefill_size=8)
    driver.add("long", list(range(5, 45)), max_new_tokens=3)
    run = driver.run()
    extend_steps = [plan for plan in run.plans if plan.extends]
    assert len(extend_steps) == 5  # 40 tokens in chunks of 8
    assert all(plan.num_extend_tokens <= 8 for plan in run.plans)
    assert [chunk.sample for plan in extend_steps for chunk in plan.extends] == \
        [False] * 4 + [True]
    assert run.outputs["long"] == driver.expected_output(3)


def test_max_running_requests_is_respected():
    driver = Driver(worker_info(num_pages=512), max_running_requests=3)
    for i in range(8):
        driver.add(f"r{i}", [5, 6, 7, i + 10], max_new_tokens=6)
    run = driver.run()
    for plan in run.plans:
        assert len(plan.decodes) + len(plan.extends) <= 3
    assert len(run.finishes) == 8


def test_a_small_pool_forces_retraction_and_nothing_is_lost():
    driver = Driver(worker_info(num_pages=40))
    for i in range(6):
        driver.add(f"r{i}", [10 + i] * 6, max_new_tokens=24)
    run = driver.run()
    assert driver.scheduler.stats.num_retractions > 0
    assert any(plan.released and plan.new_requests for plan in run.plans)
    for i in range(6):
        assert run.outputs[f"r{i}"] == driver.expected_output(24)


def test_stop_token_ids_and_eos():
    driver = Driver(worker_info(num_pages=128))
    first_three = driver.expected_output(3)
    driver.add("stop", [5, 6], max_new_tokens=10, stop_token_ids=(first_three[2],))
    driver.add("plain", [5, 6], max_new_tokens=5)
    run = driver.run()
    assert run.outputs["stop"] == first_three
    assert run.finishes["stop"].kind is FinishKind.STOP
    assert run.finishes["stop"].matched == first_three[2]
    assert EOS not in run.outputs["plain"]  # the null worker never emits EOS


def test_abort_frees_pages_of_running_and_waiting_requests():
    driver = Driver(worker_info(num_pages=64), max_running_requests=1)
    driver.add("running", list(range(5, 25)), max_new_tokens=30)
    driver.add("waiting", list(range(5, 15)), max_new_tokens=30)
    scheduler = driver.scheduler
    plan = scheduler.schedule()
    scheduler.process_result(driver.worker.execute(plan))
    assert "running" in scheduler.running and scheduler.kv.allocator.num_free < 64
    assert scheduler.abort("running").finish.kind is FinishKind.ABORT
    assert scheduler.abort("waiting").finish.kind is FinishKind.ABORT
    assert scheduler.abort("unknown") is None
    driver.run()  # delivers the releases to the worker
    assert scheduler.kv.allocator.num_free + scheduler.kv.cache.num_cached_pages == 64


def test_requests_that_can_never_fit_are_rejected():
    driver = Driver(worker_info(num_pages=16, page_size=4))
    with pytest.raises(InvalidRequestError) as error:
        driver.add("huge", list(range(5, 45)), max_new_tokens=30)
    assert error.value.field == "max_new_tokens"
    driver.add("ok", list(range(5, 45)), max_new_tokens=24)
    with pytest.raises(InvalidRequestError):
        driver.add("ok", [5], max_new_tokens=1)  # duplicate id
    driver.run()


def test_shared_prefixes_hit_the_cache_and_lpm_serves_them_first():
    driver = Driver(worker_info(num_pages=512, page_size=2), schedule_policy="lpm",
                    max_running_requests=1)
    system = list(range(10, 30))
    driver.add("warm", system + [1], max_new_tokens=2)
    driver.run()
    driver.add("other", list(range(40, 60)), max_new_tokens=2)
    driver.add("shares", system + [3, 4], max_new_tokens=2)
    run = driver.run()
    first_admitted = next(plan for plan in run.plans if plan.new_requests).new_requests[0]
    assert first_admitted.rid == "shares"
    assert first_admitted.num_cached_tokens == 20
    assert len(first_admitted.cached_page_ids) == 10


def test_disabled_radix_cache_never_shares():
    driver = Driver(worker_info(num_pages=512), disable_radix_cache=True)
    driver.add("a", list(range(5, 30)), max_new_tokens=2)
    driver.run()
    driver.add("b", list(range(5, 30)), max_new_tokens=2)
    run = driver.run()
    assert all(new.num_cached_tokens == 0 for plan in run.plans for new in plan.new_requests)
    assert driver.scheduler.kv.cache.num_cached_pages == 0


def test_pipelined_planning_runs_ahead_and_loses_nothing():
    driver = Driver(worker_info(num_pages=60, page_size=2), chunked_prefill_size=8)
    for i in range(12):
        driver.add(f"r{i}", list(range(5, 9 + i)), max_new_tokens=3 + i, stop_token_ids=(40,))
    run = driver.run(pipelined=True)
    assert run.max_inflight == 2
    for i in range(12):
        want = driver.expected_output(3 + i)
        if 40 in want:
            want = want[:want.index(40) + 1]
        assert run.outputs[f"r{i}"] == want


def test_unseeded_requests_get_a_seed_that_survives_retraction():
    driver = Driver(worker_info(num_pages=40))
    for i in range(6):
        driver.add(f"r{i}", [10 + i] * 6, max_new_tokens=24)
    seeds = {req.rid: req.sampling.seed for req in driver.scheduler.waiting}
    assert None not in seeds.values() and len(set(seeds.values())) == 6
    run = driver.run()
    assert driver.scheduler.stats.num_retractions > 0
    readmitted = [new for plan in run.plans for new in plan.new_requests]
    assert len(readmitted) > 6
    assert all(new.sampling.seed == seeds[new.rid] for new in readmitted)


@pytest.mark.parametrize("pipelined", [False, True])
def test_requests_sharing_a_prefix_being_computed_wait_for_it(pipelined):
    driver = Driver(worker_info(num_pages=4096, page_size=4))
    system = list(range(10, 74))  # 64 tokens, past the 32-token deferral threshold
    for i in range(8):
        driver.add(f"r{i}", system + [5 + i, 6, 7], max_new_tokens=4)
    driver.add("loner", list(range(100, 140)), max_new_tokens=4)
    run = driver.run(pipelined=pipelined)
    first_step = run.plans[0].new_requests
    assert {new.rid for new in first_step} == {"r0", "loner"}  # the others wait for r0
    later = [new for plan in run.plans[1:] for new in plan.new_requests]
    assert all(new.num_cached_tokens == 64 for new in later)
    assert all(run.outputs[f"r{i}"] == driver.expected_output(4) for i in range(8))


def test_no_deferral_without_the_radix_cache():
    driver = Driver(worker_info(num_pages=4096, page_size=4), disable_radix_cache=True)
    system = list(range(10, 74))
    for i in range(4):
        driver.add(f"r{i}", system + [5 + i], max_new_tokens=2)
    run = driver.run()
    assert len(run.plans[0].new_requests) == 4


@pytest.mark.parametrize("pipelined", [False, True])
def test_mixed_chunk_decodes_beside_prefill_within_the_budget(pipelined):
    driver = Driver(worker_info(num_pages=4096, page_size=4), enable_mixed_chunk=True,
                    chunked_prefill_size=64)
    for i in range(12):  # staggered: later prompts arrive while earlier ones decode
        driver.add(f"r{i}", list(range(5, 45 + 7 * i)), max_new_tokens=20)
    run = driver.run(pipelined=pipelined)
    for i in range(12):
        assert run.outputs[f"r{i}"] == driver.expected_output(20)
    mixed = [plan for plan in run.plans if plan.extends and plan.decodes]
    assert mixed, "no step mixed decodes into a prefill"
    for plan in run.plans:
        assert sum(chunk.length for chunk in plan.extends) + len(plan.decodes) <= 64


def test_mixed_chunk_never_starves_admissions_when_decodes_fill_the_budget():
    # 40 decoders exceed half of a 64-token budget: steps with prefill stay prefill-only.
    driver = Driver(worker_info(num_pages=4096, page_size=4), enable_mixed_chunk=True,
                    chunked_prefill_size=64, max_running_requests=64)
    for i in range(40):
        driver.add(f"d{i}", [7, 8, 9], max_new_tokens=30)
    driver.add("late", list(range(5, 60)), max_new_tokens=5)
    run = driver.run()
    assert run.outputs["late"] == driver.expected_output(5)
    assert all(len(plan.decodes) * 2 <= 64 for plan in run.plans if plan.extends)
