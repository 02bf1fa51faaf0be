"""The hicache core's transfers: store and prefetch through real L3 files, lookups, checks,
clear, counters, and transfers on threads while the pool is replaced."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from radixmesh.services.hicache.attachment import Attachment
from radixmesh.services.hicache.cache import HiCache
from radixmesh.services.hicache.errors import StalePoolError
from radixmesh.services.hicache.storage import FileStorageBackend
from radixmesh.shared.errors import InvalidRequestError
from tests.hicache.slots import CHAIN, LAYOUT, NAMESPACE_ROOT, SLOT_BYTES, mapped, slot_payload

CacheFactory = Callable[..., HiCache]


def stored(cache: HiCache, num_pages: int, num_device_pages: int = 8) -> Attachment:
    """Attaches, fills slots 1..num_pages with pages 0..num_pages-1, stores them to L3."""
    attachment = cache.attach(LAYOUT, num_device_pages, NAMESPACE_ROOT)
    slots = list(range(1, num_pages + 1))
    with mapped(attachment) as pool:
        for index, slot in enumerate(slots):
            pool.write_slot(slot, slot_payload(index))
    assert cache.store(attachment.epoch, CHAIN[:num_pages], slots) == num_pages
    return attachment


def read_slots(attachment: Attachment, slots: list[int]) -> list[bytes]:
    with mapped(attachment) as pool:
        return [bytes(pool.slot_bytes(slot)) for slot in slots]


def test_pages_round_trip_through_l3_into_other_slots(make_cache: CacheFactory) -> None:
    cache = make_cache()
    attachment = stored(cache, 3)
    assert cache.lookup(CHAIN[:5]) == 3
    assert cache.prefetch(attachment.epoch, CHAIN[:3], [7, 5, 9]) == 3
    assert read_slots(attachment, [7, 5, 9]) == [slot_payload(index) for index in range(3)]


def test_a_restarted_service_finds_the_pages_in_its_files(make_cache: CacheFactory) -> None:
    stored(make_cache(), 2)
    later = make_cache()  # the same directory, a new instance: L2 empty, L3 kept
    attachment = later.attach(LAYOUT, 8, NAMESPACE_ROOT)
    assert later.prefetch(attachment.epoch, CHAIN[:2], [3, 4]) == 2
    assert read_slots(attachment, [3, 4]) == [slot_payload(0), slot_payload(1)]


def test_a_prefetch_stops_at_the_first_miss(make_cache: CacheFactory) -> None:
    cache = make_cache()
    attachment = stored(cache, 2)
    assert cache.prefetch(attachment.epoch, [CHAIN[0], CHAIN[5], CHAIN[1]], [4, 5, 6]) == 1


def test_a_corrupt_file_stops_a_prefetch_at_that_page(make_cache: CacheFactory,
                                                      tmp_path: Path) -> None:
    cache = make_cache()
    attachment = stored(cache, 3)
    path = tmp_path / "hicache" / CHAIN[1].hex()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert cache.prefetch(attachment.epoch, CHAIN[:3], [4, 5, 6]) == 1
    assert not path.exists()
    storage_stats = cache.snapshot().storage_stats
    assert storage_stats is not None and storage_stats.corrupt_removed == 1
    assert cache.lookup(CHAIN[:3]) == 1


def test_a_page_of_another_size_never_reaches_a_slot(make_cache: CacheFactory,
                                                     tmp_path: Path) -> None:
    directory = tmp_path / "hicache"
    FileStorageBackend(directory, NAMESPACE_ROOT).put(CHAIN[0], b"x" * (SLOT_BYTES - 1))
    cache = make_cache()
    attachment = cache.attach(LAYOUT, 8, NAMESPACE_ROOT)
    assert cache.prefetch(attachment.epoch, CHAIN[:1], [1]) == 0
    assert read_slots(attachment, [1]) == [bytes(SLOT_BYTES)]
    assert not (directory / CHAIN[0].hex()).exists()


def test_a_stale_epoch_is_refused(make_cache: CacheFactory) -> None:
    cache = make_cache()
    with pytest.raises(StalePoolError, match="Attach first"):
        cache.prefetch(cache.epoch, CHAIN[:1], [1])
    cache.attach(LAYOUT, 8, NAMESPACE_ROOT)
    for transfer in (cache.prefetch, cache.store):
        with pytest.raises(StalePoolError) as caught:
            transfer("0" * 32, CHAIN[:1], [1])
        assert caught.value.grpc_status == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(("keys", "slots", "field"), [
    (CHAIN[:1], [0], "slots[0]"),
    (CHAIN[:2], [1, 17], "slots[1]"),
    (CHAIN[:2], [-1, 2], "slots[0]"),
    (CHAIN[:2], [3, 3], "slots[1]"),
    (CHAIN[:2], [1], "slots"),
    ([CHAIN[0], b"short"], [1, 2], "keys[1]"),
])
def test_bad_slots_and_keys_are_named(make_cache: CacheFactory, keys: list[bytes],
                                      slots: list[int], field: str) -> None:
    cache = make_cache()
    attachment = cache.attach(LAYOUT, 8, NAMESPACE_ROOT)  # 16 slots
    for transfer in (cache.prefetch, cache.store):
        with pytest.raises(InvalidRequestError) as caught:
            transfer(attachment.epoch, keys, slots)
        assert caught.value.field == field


def test_without_storage_nothing_is_found_or_written(make_cache: CacheFactory) -> None:
    cache = make_cache(hicache_storage_backend=None)
    attachment = cache.attach(LAYOUT, 8, NAMESPACE_ROOT)
    assert cache.lookup(CHAIN[:2]) == 0
    assert cache.store(attachment.epoch, CHAIN[:2], [1, 2]) == 0
    assert cache.prefetch(attachment.epoch, CHAIN[:2], [1, 2]) == 0
    assert make_cache().lookup(CHAIN[:2]) == 0  # storage configured, nothing attached yet


def test_writes_off_store_nothing(make_cache: CacheFactory, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    cache = make_cache(hicache_storage_dir=str(blocker))
    attachment = cache.attach(LAYOUT, 8, NAMESPACE_ROOT)
    assert not attachment.storage
    assert cache.store(attachment.epoch, CHAIN[:2], [1, 2]) == 0


def test_clear_empties_l3_of_the_namespace(make_cache: CacheFactory, tmp_path: Path) -> None:
    cache = make_cache()
    stored(cache, 3)
    assert cache.clear() == 3
    assert cache.lookup(CHAIN[:3]) == 0
    assert os.listdir(tmp_path / "hicache") == []


def test_a_set_stop_moves_nothing(make_cache: CacheFactory) -> None:
    cache = make_cache()
    attachment = stored(cache, 2)
    stop = threading.Event()
    stop.set()
    assert cache.prefetch(attachment.epoch, CHAIN[:2], [3, 4], stop) == 0


def test_counters(make_cache: CacheFactory) -> None:
    cache = make_cache()
    attachment = stored(cache, 3)
    cache.prefetch(attachment.epoch, CHAIN[:2], [4, 5])
    cache.lookup(CHAIN[:4])
    snapshot = cache.snapshot()
    stats = snapshot.stats
    assert (stats.stored.pages, stats.stored.tokens, stats.stored.bytes) == (3, 12, 3 * SLOT_BYTES)
    assert (stats.prefetched.pages, stats.prefetched.bytes) == (2, 2 * SLOT_BYTES)
    assert stats.stored.seconds > 0 and stats.prefetched.seconds > 0
    assert (stats.lookups, stats.lookup_hit_pages, stats.lookup_hit_tokens) == (1, 3, 12)
    assert (snapshot.l2_slots, snapshot.l2_bytes) == (16, 17 * SLOT_BYTES)
    assert snapshot.storage_usage is not None and snapshot.storage_usage.num_files == 3


def test_concurrent_transfers_and_a_re_attach(make_cache: CacheFactory) -> None:
    """Threads store and prefetch their own slots while the pool is replaced under them: each
    transfer either completes on the pool of its epoch or is refused; none sees an unmapped
    pool, and the pages each thread stored come back whole."""
    cache = make_cache()
    attachment = stored(cache, 8, num_device_pages=16)  # 32 slots
    failures: list[BaseException] = []
    # The re-attach comes once every thread has moved pages.
    started = threading.Barrier(5, timeout=60)

    def worker(index: int) -> None:
        slots = [9 + 2 * index, 10 + 2 * index]
        try:
            for round_ in range(200):
                if round_ == 1:
                    started.wait()
                assert cache.prefetch(attachment.epoch, CHAIN[2 * index:2 * index + 2],
                                      slots) == 2
                assert cache.store(attachment.epoch, CHAIN[2 * index:2 * index + 2], slots) == 2
        except StalePoolError:
            pass  # the pool was replaced: the expected end
        except BaseException as error:  # noqa: B036 - re-raised by the main thread
            failures.append(error)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    new = cache.attach(replace(LAYOUT, num_kv_heads=1), 16, NAMESPACE_ROOT)
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert new.epoch != attachment.epoch
    assert cache.lookup(CHAIN[:8]) == 8
