"""Request ids at the scheduler: in use while waiting or running (retracted included), free
again once the request finished or was aborted."""

from __future__ import annotations

import pytest

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.requests import FinishKind
from tests.scheduler.driver import Driver, worker_info


def test_a_waiting_rid_is_refused_and_the_first_request_unharmed():
    driver = Driver(worker_info(num_pages=128), max_running_requests=1)
    driver.add("busy", [5, 6, 7], max_new_tokens=4)
    driver.add("queued", [8, 9], max_new_tokens=3)
    with pytest.raises(InvalidRequestError, match="already in use") as refused:
        driver.add("queued", [10, 11], max_new_tokens=3)
    assert refused.value.field == "rid"
    assert [req.rid for req in driver.scheduler.waiting] == ["busy", "queued"]
    run = driver.run()
    assert run.outputs["queued"] == driver.expected_output(3)
    assert run.finishes["queued"].kind is FinishKind.LENGTH


def test_a_running_rid_is_refused():
    driver = Driver(worker_info(num_pages=128))
    driver.add("live", [5, 6, 7], max_new_tokens=5)
    scheduler = driver.scheduler
    scheduler.process_result(driver.worker.execute(scheduler.schedule()))
    assert "live" in scheduler.running and "live" not in scheduler.waiting
    with pytest.raises(InvalidRequestError, match="already in use"):
        driver.add("live", [1, 2], max_new_tokens=2)
    run = driver.run()
    assert run.outputs["live"] == driver.expected_output(5)[1:]  # the first came above


def test_a_finished_or_aborted_rid_may_be_used_again():
    driver = Driver(worker_info(num_pages=128))
    driver.add("again", [5, 6, 7], max_new_tokens=2)
    assert driver.run().finishes["again"].kind is FinishKind.LENGTH
    driver.add("again", [5, 6, 7, 8], max_new_tokens=3)
    assert driver.run().outputs["again"] == driver.expected_output(3)
    driver.add("dropped", [4, 5], max_new_tokens=3)
    assert driver.scheduler.abort("dropped").finish.kind is FinishKind.ABORT
    assert "dropped" not in driver.scheduler.waiting
    driver.add("dropped", [4, 5], max_new_tokens=3)
    assert driver.run().outputs["dropped"] == driver.expected_output(3)


def test_retracted_requests_keep_their_rid_in_use_until_they_finish():
    driver = Driver(worker_info(num_pages=40))
    for i in range(6):
        driver.add(f"r{i}", [10 + i] * 6, max_new_tokens=24)
    scheduler = driver.scheduler
    while scheduler.stats.num_retractions == 0:
        scheduler.process_result(driver.worker.execute(scheduler.schedule()))
    retracted = [req.rid for req in scheduler.waiting if req.admitted_once]
    assert retracted
    for rid in retracted:
        with pytest.raises(InvalidRequestError, match="already in use"):
            driver.add(rid, [1, 2], max_new_tokens=2)
    run = driver.run()
    assert set(retracted) <= set(run.finishes)
    assert all(run.finishes[rid].kind is FinishKind.LENGTH for rid in retracted)


def test_a_burst_of_distinct_rids_all_wait_once():
    driver = Driver(worker_info(num_pages=4096), max_running_requests=8)
    for i in range(1000):
        driver.add(f"b{i}", [3 + i % 50, 4], max_new_tokens=1)
    assert len(driver.scheduler.waiting) == 1000 and "b999" in driver.scheduler.waiting
    run = driver.run()
    assert len(run.finishes) == 1000
