"""Random workloads under random engine settings: every request finishes with the right tokens,
no step writes a page another request reads, and no page leaks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.scheduler.driver import Driver, worker_info

prefixes = st.lists(st.integers(5, 12), min_size=0, max_size=44)  # past the deferral threshold


@st.composite
def workloads(draw: st.DrawFn) -> tuple[dict, list[tuple[list[int], int]]]:
    page_size = draw(st.sampled_from([1, 2, 4]))
    shared = draw(prefixes)
    requests = []
    for _ in range(draw(st.integers(1, 10))):
        head = shared[:draw(st.integers(0, len(shared)))]
        tail = draw(st.lists(st.integers(5, 12), min_size=1, max_size=10))
        requests.append((head + tail, draw(st.integers(1, 12))))
    longest = max(len(prompt) + new for prompt, new in requests)
    min_pages = -(-longest // page_size)
    settings_ = {
        "num_pages": draw(st.integers(min_pages, min_pages * 4)),
        "page_size": page_size,
        "chunked_prefill_size": draw(st.sampled_from([-1, 3, 8, 64])),
        "max_running_requests": draw(st.integers(1, 8)),
        "schedule_policy": draw(st.sampled_from(["fcfs", "lpm"])),
        "disable_radix_cache": draw(st.booleans()),
        "schedule_conservativeness": draw(st.sampled_from([0.3, 1.0, 2.0])),
    }
    return settings_, requests, draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_random_workloads_complete_without_leaks(workload):
    config, requests, pipelined = workload
    info = worker_info(config.pop("num_pages"), config.pop("page_size"))
    driver = Driver(info, **config)
    for index, (prompt, max_new) in enumerate(requests):
        driver.add(f"r{index}", prompt, max_new)
    run = driver.run(max_steps=20_000, pipelined=pipelined)
    for index, (_, max_new) in enumerate(requests):
        assert run.outputs[f"r{index}"] == driver.expected_output(max_new)
    # Twice through: the second round exercises cached prefixes and their eviction.
    for index, (prompt, max_new) in enumerate(requests):
        driver.add(f"again{index}", prompt, max_new)
    run = driver.run(max_steps=20_000, pipelined=pipelined)
    for index, (_, max_new) in enumerate(requests):
        assert run.outputs[f"again{index}"] == driver.expected_output(max_new)
