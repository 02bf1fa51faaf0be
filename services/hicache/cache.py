"""The hicache core: the L2 pool in shared memory, L3 storage, and the copies between them.

Plain Python, no gRPC. The scheduler decides what lives where; this moves bytes between the
slots it names and L3 pages named by their key, and between them and other nodes (pages read
for a peer, pages a peer sent checked into slots; `peer_link.py` does the talking). Blocking
(file I/O): the servicer calls it on threads, and concurrent transfers of different slots are
safe (the pool gate keeps the pool mapped under them; the backend is thread-safe; slots are
disjoint memory).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace

from radixmesh.services.hicache.attachment import Attachment, KVLayout
from radixmesh.services.hicache.checks import check_keys, check_namespace_root, check_slots
from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.services.hicache.errors import ForeignNamespaceError
from radixmesh.services.hicache.page_index import PageIndex
from radixmesh.services.hicache.peer_pages import ReceivedPage, rejection
from radixmesh.services.hicache.pool_gate import Attached, PoolGate
from radixmesh.services.hicache.stats import HiCacheSnapshot, HiCacheStats
from radixmesh.services.hicache.storage import StorageBackend, StoredPage, make_storage_backend
from radixmesh.shared.errors import CapacityError, InvalidRequestError, UnavailableError
from radixmesh.shared.host_pool import HostPool, HostPoolError
from radixmesh.shared.page_keys import key_hex

logger = logging.getLogger(__name__)

# Moves one page between a slot and L3; False stops the transfer there (a miss, a refused write).
PageMove = Callable[[HostPool, StorageBackend, bytes, int], bool]


def _load_page(pool: HostPool, backend: StorageBackend, key: bytes, slot: int) -> bool:
    data = backend.get(key)
    if data is None:
        return False  # a miss; a corrupt file is one too (the backend removed and counted it)
    if len(data) != pool.layout.bytes_per_slot:
        # A checked page of another size: the namespace (model, dtype, page size, TP) should
        # rule this out, so the file is useless here; it must never reach a slot.
        logger.warning("L3 page %s holds %d bytes, a slot %d: dropped", key_hex(key), len(data),
                       pool.layout.bytes_per_slot)
        backend.delete(key)
        return False
    pool.write_slot(slot, data)
    return True


def _save_page(pool: HostPool, backend: StorageBackend, key: bytes, slot: int) -> bool:
    # Straight from shared memory, no copy: the caller keeps the slot until store() returns.
    with pool.slot_bytes(slot) as view:
        return backend.put(key, view)


class HiCache:
    """Slot ids run 1..num_slots; slot 0 of the pool is never granted. Transfers name the epoch
    their slots were granted in: new per instance, and new again whenever a re-attach replaces
    the pool, so slot ids of a pool that is gone can never touch its successor."""

    def __init__(self, config: HiCacheConfig, index: PageIndex | None = None) -> None:
        self._config = config
        self._index = index  # told of every L3 page stored and gone, by the backend itself
        self._gate = PoolGate()
        self._attach_lock = threading.Lock()  # one attach or close at a time
        self._stats_lock = threading.Lock()
        self._stats = HiCacheStats()
        self._epoch = uuid.uuid4().hex
        self._closed = False

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def namespace_root(self) -> bytes | None:
        """h_0 of the keys of the attached namespace; None before the first attach."""
        state = self._gate.current
        return None if state is None else state.namespace_root

    def attach(self, layout: KVLayout, num_device_pages: int,
               namespace_root: bytes) -> Attachment:
        """Sizes L2 for `layout` and opens L3 for `namespace_root`. The same request keeps the
        pool; another layout or page count replaces it (a new name and epoch, the old segment
        unlinked once no transfer uses it); another namespace reopens L3."""
        layout.host_pool_layout(1)  # a bad field fails here, before anything changes
        if num_device_pages < 1:
            raise InvalidRequestError("num_device_pages", f"must be >= 1, got {num_device_pages}")
        check_namespace_root(namespace_root)
        with self._attach_lock:
            if self._closed:
                raise UnavailableError("the hicache service is shutting down")
            old = self._gate.current
            new = self._next_state(old, layout, num_device_pages, namespace_root)
            if new is not old:
                self._gate.swap(new)
                self._epoch = new.epoch
                if old is not None:
                    self._release(old, keep=new)
        return Attachment(new.pool.name, new.num_slots, new.epoch,
                          storage=new.backend is not None and new.backend.writable)

    def lookup(self, keys: Sequence[bytes]) -> int:
        """How many leading `keys` L3 holds; 0 without L3 or before the first attach."""
        check_keys(keys)
        with self._gate.use_current() as state:
            if state is None or state.backend is None:
                return 0
            hits = state.backend.contains_prefix(keys)
            page_size = state.layout.page_size
        with self._stats_lock:
            self._stats = self._stats.plus_lookup(hits, page_size)
        return hits

    def prefetch(self, epoch: str, keys: Sequence[bytes], slots: Sequence[int],
                 stop: threading.Event | None = None) -> int:
        """Reads `keys[i]` from L3 into `slots[i]`, in order, up to the first miss or bad page
        (or `stop` set); returns how many leading pages are now in their slots."""
        return self._transfer(epoch, keys, slots, stop, _load_page, "prefetched")

    def store(self, epoch: str, keys: Sequence[bytes], slots: Sequence[int],
              stop: threading.Event | None = None) -> int:
        """Writes `slots[i]` to L3 as `keys[i]`, in order, up to the first refused write (or
        `stop` set); returns how many were written (0 without L3 or with writes off). The
        slots are read until this returns; the caller may reuse them after."""
        return self._transfer(epoch, keys, slots, stop, _save_page, "stored")

    def read_for_peer(self, namespace_root: bytes, keys: Sequence[bytes],
                      max_bytes: int) -> list[StoredPage]:
        """The leading pages of `keys` L3 holds, with their stored checksums, up to the first
        miss or `max_bytes` (one page at least); ForeignNamespaceError for another namespace."""
        check_keys(keys)
        check_namespace_root(namespace_root)
        started, pages, size = time.perf_counter(), [], 0
        with self._gate.use_current() as state:
            if state is None or state.backend is None:
                return []
            if state.namespace_root != namespace_root:
                raise ForeignNamespaceError(
                    "namespace_root", "this node caches pages of another namespace (model, "
                    "weights, KV dtype, page size or TP layout)")
            for key in keys:
                page = state.backend.get_for_peer(key)
                if page is None:
                    break
                pages.append(page)
                size += len(page.data)
                if size >= max_bytes:
                    break
            page_size = state.layout.page_size
        self._count("served", len(pages), page_size, size, time.perf_counter() - started)
        return pages

    def place_fetched(self, epoch: str, keys: Sequence[bytes], slots: Sequence[int],
                      pages: Sequence[ReceivedPage]) -> int:
        """Checks `pages[i]` against `keys[i]` (key, length, checksum) and writes it to
        `slots[i]`, in order, up to the first that fails; returns how many were placed."""
        check_keys(keys)
        with self._gate.use(epoch) as state:
            check_slots(slots, len(keys), state.num_slots)
            slot_bytes = state.pool.layout.bytes_per_slot
            done = 0
            for page, key, slot in zip(pages, keys, slots, strict=False):
                reason = rejection(page, key, slot_bytes)
                if reason is not None:
                    logger.warning("fetched page %s rejected: %s; it is recomputed",
                                   key_hex(key), reason)
                    self._count("fetched", 0, 0, 0, 0.0, rejected=1)
                    break
                state.pool.write_slot(slot, page.data)
                done += 1
        return done

    def fetched(self, num_pages: int, num_asked: int, seconds: float) -> None:
        """A fetch from another node ended, `num_pages` of `num_asked` placed in `seconds`."""
        with self._gate.use_current() as state:
            if state is None:
                return
            page_size, slot_bytes = state.layout.page_size, state.pool.layout.bytes_per_slot
        self._count("fetched", num_pages, page_size, num_pages * slot_bytes, seconds,
                    fallback=num_pages < num_asked)

    def clear(self) -> int:
        """Drops every L3 page of the attached namespace; returns how many."""
        with self._gate.use_current() as state:
            if state is None or state.backend is None:
                return 0
            return state.backend.clear()

    def close(self) -> None:
        """Unlinks the pool and closes L3, once no transfer uses them. Idempotent; later calls
        to attach are refused, and transfers find no pool."""
        with self._attach_lock:
            self._closed = True
            old = self._gate.swap(None)
        if old is not None:
            self._release(old, keep=None)

    def snapshot(self) -> HiCacheSnapshot:
        """The counters and tier sizes, for `/metrics`."""
        with self._stats_lock:
            stats = self._stats
        with self._gate.use_current() as state:
            backend = None if state is None else state.backend
            snapshot = HiCacheSnapshot(
                stats=stats,
                l2_slots=0 if state is None else state.num_slots,
                l2_bytes=0 if state is None else state.pool.layout.total_bytes,
                storage_usage=None if backend is None else backend.usage(),
                storage_stats=None if backend is None else backend.stats)
        return snapshot

    def _transfer(self, epoch: str, keys: Sequence[bytes], slots: Sequence[int],
                  stop: threading.Event | None, move: PageMove, direction: str) -> int:
        check_keys(keys)
        with self._gate.use(epoch) as state:
            check_slots(slots, len(keys), state.num_slots)
            if state.backend is None:
                return 0
            started = time.perf_counter()
            done = 0
            for key, slot in zip(keys, slots, strict=True):
                if stop is not None and stop.is_set():
                    break  # the caller went away: no page more than needed moves
                if not move(state.pool, state.backend, key, slot):
                    break
                done += 1
            seconds = time.perf_counter() - started
            layout = state.pool.layout
        self._count(direction, done, layout.page_size, done * layout.bytes_per_slot, seconds)
        return done

    def _count(self, direction: str, pages: int, page_size: int, num_bytes: int,
               seconds: float, fallback: bool = False, rejected: int = 0) -> None:
        with self._stats_lock:
            stats = self._stats
            moved = getattr(stats, direction).plus(pages, page_size, num_bytes, seconds)
            self._stats = replace(stats, **{direction: moved},
                                  fetch_fallbacks=stats.fetch_fallbacks + fallback,
                                  fetch_rejected_pages=stats.fetch_rejected_pages + rejected)

    def _next_state(self, old: Attached | None, layout: KVLayout, num_device_pages: int,
                    namespace_root: bytes) -> Attached:
        """`old` when the request changes nothing; else a state with what it changes made new."""
        same_pool = old is not None and (old.layout, old.num_device_pages) == (
            layout, num_device_pages)
        same_root = old is not None and old.namespace_root == namespace_root
        if old is not None and same_pool and same_root:
            return old
        if old is not None and same_pool:
            pool, epoch = old.pool, old.epoch
        else:
            # The first pool takes the instance's epoch; each replacement gets a new one.
            epoch = self._epoch if old is None else uuid.uuid4().hex
            pool = self._create_pool(layout, num_device_pages, epoch)
        try:
            backend = old.backend if old is not None and same_root else self._open_backend(
                namespace_root)
        except BaseException:
            if old is None or pool is not old.pool:
                pool.close()
            raise
        return Attached(layout, num_device_pages, pool, epoch, namespace_root, backend)

    def _create_pool(self, layout: KVLayout, num_device_pages: int, epoch: str) -> HostPool:
        one_slot = layout.host_pool_layout(1)
        num_slots = self._num_slots(one_slot.bytes_per_slot, num_device_pages)
        try:
            # Slot 0 is allocated but never granted, so the pool has num_slots + 1. The name
            # is the epoch's, a fresh uuid: no two services (the hicache services of a mesh's
            # data-parallel replicas, say) nor two starts of one ever share a segment.
            return HostPool.create(f"radixmesh_hicache_{epoch}",
                                   replace(one_slot, num_slots=num_slots + 1))
        except HostPoolError as error:
            raise CapacityError(str(error)) from error

    def _num_slots(self, bytes_per_slot: int, num_device_pages: int) -> int:
        config = self._config
        size = config.host_pool_bytes
        if size is not None:
            num_slots = size // bytes_per_slot
            source = f"--hicache-size {config.hicache_size} GB"
        else:
            num_slots = round(config.hicache_ratio * num_device_pages)
            source = f"--hicache-ratio {config.hicache_ratio} x {num_device_pages} device pages"
        if num_slots < 1:
            raise CapacityError(f"{source} makes no host slot of {bytes_per_slot} bytes")
        return num_slots

    def _open_backend(self, namespace_root: bytes) -> StorageBackend | None:
        name = self._config.hicache_storage_backend
        if name is None:
            return None
        backend = make_storage_backend(name, directory=self._config.hicache_storage_dir,
                                       namespace_root=namespace_root,
                                       capacity_bytes=self._config.storage_capacity_bytes,
                                       listener=self._index)
        if self._index is not None:
            # Before any transfer sees the backend, so no store can slip between the two.
            self._index.reset(backend.keys())
        return backend

    @staticmethod
    def _release(old: Attached, keep: Attached | None) -> None:
        """Closes what of `old` the state `keep` no longer uses."""
        if keep is None or old.pool is not keep.pool:
            old.pool.close()
        if old.backend is not None and (keep is None or old.backend is not keep.backend):
            old.backend.close()
