"""`/flush_cache` at the scheduler: refused while a request is live, every page back once idle."""

from __future__ import annotations

from radixmesh.services.scheduler.cache_flush import flush_cache
from tests.scheduler.driver import Driver, worker_info


def test_a_flush_waits_for_idle_then_frees_every_cached_page() -> None:
    driver = Driver(worker_info(num_pages=64, page_size=4))
    driver.add("a", list(range(3, 20)), max_new_tokens=4)
    refused = flush_cache(driver.scheduler, num_inflight=0)
    assert not refused.flushed and "1 requests" in refused.message
    driver.run()
    assert driver.scheduler.kv.cache.num_cached_pages > 0
    assert not flush_cache(driver.scheduler, num_inflight=1).flushed  # a step in flight
    cached = driver.scheduler.kv.cache.num_cached_pages
    done = flush_cache(driver.scheduler, num_inflight=0)
    assert done.flushed and done.freed_pages == cached
    assert driver.scheduler.kv.cache.num_cached_pages == 0
    assert driver.scheduler.kv.allocator.num_free == 64
    driver.scheduler.check_integrity()
