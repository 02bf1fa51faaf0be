"""The scheduler's busy log line: `#token` counts KV tokens in use, never more than the pool."""

from __future__ import annotations

import logging
import re

import pytest

from radixmesh.services.scheduler.stats import scheduler_load
from tests.scheduler.driver import Driver, worker_info

DECODE_LINE = re.compile(r"Decode batch\. #running-req: (\d+), #token: (\d+), "
                         r"token usage: ([\d.]+)")


def decode_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, int, float]]:
    return [(int(match[1]), int(match[2]), float(match[3]))
            for match in (DECODE_LINE.search(record.getMessage()) for record in caplog.records)
            if match]


def test_token_count_of_a_full_pool_with_shared_prefixes_fits_the_pool(
        caplog: pytest.LogCaptureFixture) -> None:
    # 24 requests share a 96-token prefix: summed per request, their KV would be many times
    # the 256-token pool, though the shared pages are held once.
    num_pages, page_size = 64, 4
    pool_tokens = num_pages * page_size
    driver = Driver(worker_info(num_pages=num_pages, page_size=page_size, max_running=24),
                    decode_log_interval=1)
    shared = list(range(10, 106))
    driver.add("warm", shared + [3], max_new_tokens=1)
    driver.run()
    for i in range(24):
        driver.add(f"r{i}", shared + [40 + i], max_new_tokens=24)
    with caplog.at_level(logging.INFO, logger="radixmesh.scheduler"):
        driver.run()
    lines = decode_lines(caplog)
    assert lines, "no decode line was logged"
    assert max(running for running, _, _ in lines) > 1
    assert max(usage for _, _, usage in lines) > 0.9, "the pool never filled"
    for _, tokens, usage in lines:
        assert tokens <= pool_tokens
        # The same accounting as token usage: pages in use times the page size.
        assert tokens == pytest.approx(usage * pool_tokens, abs=0.005 * pool_tokens + 1)


def test_gen_throughput_reaches_the_load_the_front_door_exports() -> None:
    driver = Driver(worker_info(num_pages=64, page_size=4, max_running=4), decode_log_interval=2)
    assert scheduler_load(driver.scheduler).gen_throughput == 0.0
    for i in range(4):
        driver.add(f"r{i}", [10 + i] * 8, max_new_tokens=16)
    driver.run()
    assert scheduler_load(driver.scheduler).gen_throughput > 0.0
