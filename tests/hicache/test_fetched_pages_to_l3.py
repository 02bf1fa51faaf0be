"""Pages fetched from another node go on to this node's L3 like any page entering host
memory (the scheduler's side; `test_remote_fetch_mesh.py` checks the files on a real node)."""

from __future__ import annotations

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.host_cache import HostCache, HostPoolSpec, build_host_cache
from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.request import SchedReq
from radixmesh.shared.page_keys import page_keys
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import WorkerInfo

PAGE = 2
INFO = WorkerInfo(model_id="tiny", num_pages=16, page_size=PAGE, context_len=256,
                  vocab_size=512, eos_token_ids=(2,), kv_dtype="float32",
                  max_running_requests=4, num_layers=1, num_kv_heads=1, head_dim=8,
                  weights_fingerprint="ab12")
PROMPT = tuple(range(40, 51))  # 5 full pages before the last token


def attached(storage: bool = True) -> HostCache:
    config = SchedulerConfig(enable_hierarchical_cache=True, hicache_prefetch_threshold=PAGE)
    host_cache = build_host_cache(config, INFO, PageAllocator(INFO.num_pages))
    assert host_cache is not None
    host_cache.attach(HostPoolSpec("pool", 32, "epoch-1", storage))
    host_cache.take_attachment()
    return host_cache


def fetch(host_cache: HostCache, rid: str, in_storage: int, remote: int,
          salt: str | None = None) -> tuple[list[bytes], list[int]]:
    """A prefetch of `in_storage` pages from L3 and `remote` from a peer, all placed."""
    req = SchedReq(rid, PROMPT, SamplingParams(), arrival=1, cache_salt=salt)
    [job] = host_cache.lookup_candidates([req])
    assert host_cache.start_fetch(job, in_storage, remote, "127.0.0.1:1")
    keys, slots = list(job.keys), list(job.slots)
    host_cache.finish_fetch(job, len(slots))
    return keys, slots


def test_fetched_pages_are_queued_for_l3_and_l3_pages_are_not() -> None:
    host_cache = attached()
    keys, slots = fetch(host_cache, "r", in_storage=2, remote=3)
    assert host_cache.take_stores() == list(zip(keys[2:], slots[2:], strict=True))
    tier = host_cache.cache.tier
    assert tier.storing == set(slots[2:])
    # Until the store answers, host eviction leaves those slots alone.
    host_cache.cache.evict_host(len(slots))
    assert set(slots[2:]) <= {slot for node_slots in _held(host_cache) for slot in node_slots}
    host_cache.stored(slots[2:], host_cache.epoch)
    assert not tier.storing
    host_cache.cache.check_consistency()


def test_pages_the_tree_had_already_are_not_stored_again() -> None:
    host_cache = attached()
    fetch(host_cache, "first", in_storage=0, remote=5)
    assert len(host_cache.take_stores()) == 5
    # The same prompt again: nothing left to fetch past what the tree holds.
    req = SchedReq("again", PROMPT, SamplingParams(), arrival=2)
    assert host_cache.lookup_candidates([req]) == []
    assert host_cache.take_stores() == []


def test_without_l3_nothing_is_queued() -> None:
    host_cache = attached(storage=False)
    # Without L3 no lookup starts at all; a remote-only fetch is the scheduler's to start.
    assert host_cache.lookup_candidates([SchedReq("r", PROMPT, SamplingParams(), 1)]) == []
    assert host_cache.take_stores() == [] and not host_cache.cache.tier.storing


def _held(host_cache: HostCache) -> list[list[int]]:
    cache = host_cache.cache
    stack = [child for root in cache._roots for child in root.children.values()]
    held = []
    while stack:
        node = stack.pop()
        held.append(node.host_slots)
        stack.extend(node.children.values())
    return held


def test_a_salted_request_fetches_and_stores_under_its_salts_keys() -> None:
    host_cache = attached()
    namespace = host_cache.cache.key_namespace
    assert namespace is not None
    keys, _ = fetch(host_cache, "salted", in_storage=0, remote=5, salt="tenant-a")
    assert keys == page_keys(namespace.with_salt("tenant-a").root(), PROMPT[:10], PAGE)
    assert [key for key, _ in host_cache.take_stores()] == keys
    # The unsalted request finds nothing of it: it asks for its own keys.
    keys, _ = fetch(host_cache, "unsalted", in_storage=0, remote=5)
    assert keys == page_keys(host_cache.key_root, PROMPT[:10], PAGE)
