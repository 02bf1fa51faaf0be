"""The hicache core's attach: L2 sizing, idempotence, replacement, bad requests, close."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import grpc
import pytest

from radixmesh.services.hicache.cache import HiCache
from radixmesh.services.hicache.errors import StalePoolError
from radixmesh.shared.errors import CapacityError, InvalidRequestError, UnavailableError
from radixmesh.shared.host_pool import SHM_DIR
from tests.hicache.slots import LAYOUT, NAMESPACE_ROOT, OTHER_ROOT, SLOT_BYTES

CacheFactory = Callable[..., HiCache]


def test_slots_follow_the_ratio_and_slot_0_is_extra(make_cache: CacheFactory) -> None:
    cache = make_cache(hicache_ratio=2.5)
    attachment = cache.attach(LAYOUT, 10, NAMESPACE_ROOT)
    assert attachment.num_slots == 25
    assert attachment.epoch == cache.epoch and len(attachment.epoch) == 32
    assert attachment.storage
    assert (SHM_DIR / attachment.pool_name).stat().st_size == 26 * SLOT_BYTES


def test_slots_follow_hicache_size_in_gb(make_cache: CacheFactory) -> None:
    cache = make_cache(hicache_size=1e-5)  # 10,000 bytes: 9 slots of 1,024, whatever the ratio
    assert cache.attach(LAYOUT, 1000, NAMESPACE_ROOT).num_slots == 9


def test_a_pool_too_small_for_one_slot_is_refused(make_cache: CacheFactory) -> None:
    with pytest.raises(CapacityError, match="--hicache-size"):
        make_cache(hicache_size=1e-7).attach(LAYOUT, 10, NAMESPACE_ROOT)
    with pytest.raises(CapacityError, match="--hicache-ratio"):
        make_cache(hicache_ratio=0.1).attach(LAYOUT, 2, NAMESPACE_ROOT)


def test_the_same_request_keeps_the_pool(make_cache: CacheFactory) -> None:
    cache = make_cache()
    first = cache.attach(LAYOUT, 8, NAMESPACE_ROOT)
    assert cache.attach(LAYOUT, 8, NAMESPACE_ROOT) == first
    # Another namespace reopens L3 but keeps the pool and its slots' epoch.
    assert cache.attach(LAYOUT, 8, OTHER_ROOT) == first


@pytest.mark.parametrize("change", [{"layout": replace(LAYOUT, head_dim=16)},
                                    {"num_device_pages": 9}])
def test_another_layout_replaces_the_pool(make_cache: CacheFactory,
                                          change: dict[str, object]) -> None:
    cache = make_cache()
    old = cache.attach(LAYOUT, 8, NAMESPACE_ROOT)
    request: dict[str, object] = {"layout": LAYOUT, "num_device_pages": 8,
                                  "namespace_root": NAMESPACE_ROOT}
    new = cache.attach(**{**request, **change})  # type: ignore[arg-type]
    assert new.pool_name != old.pool_name and new.epoch != old.epoch
    assert not (SHM_DIR / old.pool_name).exists()
    assert (SHM_DIR / new.pool_name).exists()
    with pytest.raises(StalePoolError):
        cache.store(old.epoch, [], [])


@pytest.mark.parametrize(("args", "field"), [
    ((replace(LAYOUT, dtype="int4"), 8, NAMESPACE_ROOT), "layout"),
    ((replace(LAYOUT, num_layers=0), 8, NAMESPACE_ROOT), "layout"),
    ((LAYOUT, 0, NAMESPACE_ROOT), "num_device_pages"),
    ((LAYOUT, 8, b"short"), "namespace_root"),
])
def test_a_bad_attach_names_its_field(make_cache: CacheFactory, args: tuple[object, ...],
                                      field: str) -> None:
    cache = make_cache()
    with pytest.raises(InvalidRequestError) as caught:
        cache.attach(*args)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert caught.value.grpc_status == grpc.StatusCode.INVALID_ARGUMENT
    assert cache.snapshot().l2_slots == 0  # nothing was made


def test_close_unlinks_the_pool_and_ends_the_instance(make_cache: CacheFactory) -> None:
    cache = make_cache()
    attachment = cache.attach(LAYOUT, 4, NAMESPACE_ROOT)
    cache.close()
    cache.close()
    assert not (SHM_DIR / attachment.pool_name).exists()
    with pytest.raises(StalePoolError):
        cache.prefetch(attachment.epoch, [], [])
    with pytest.raises(UnavailableError):
        cache.attach(LAYOUT, 4, NAMESPACE_ROOT)


def test_every_instance_has_its_own_epoch(make_cache: CacheFactory) -> None:
    assert make_cache().epoch != make_cache().epoch


def test_without_storage_the_pool_still_works(make_cache: CacheFactory) -> None:
    cache = make_cache(hicache_storage_backend=None)
    attachment = cache.attach(LAYOUT, 4, NAMESPACE_ROOT)
    assert not attachment.storage
    assert cache.snapshot().storage_usage is None
