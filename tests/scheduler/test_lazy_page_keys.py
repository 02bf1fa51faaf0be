"""Page keys in the hierarchical cache's tree are hashed only when L3 needs them: a host pool
without storage hashes no page, and keys hashed late (L3 came on, a prefetch asks) are the
same chain as keys hashed at insertion would have been."""

from __future__ import annotations

from radixmesh.services.scheduler.host_cache import HostCache, HostPoolSpec
from radixmesh.services.scheduler.host_slots import HostSlots
from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.prefix_cache.hi_radix_cache import HiRadixCache
from radixmesh.services.scheduler.prefix_cache.radix_node import RadixNode
from radixmesh.shared.page_keys import KeyNamespace, page_keys

PAGE = 2
NAMESPACE = KeyNamespace("m", "w", "float32", PAGE, "tp1")


def host_cache(num_pages: int, storage: bool, policy: str = "write_through") -> HostCache:
    cache = HiRadixCache(PAGE, PageAllocator(num_pages), HostSlots(0), policy, NAMESPACE)
    hosts = HostCache(cache, NAMESPACE.root(), "best_effort", 4, 3.0)
    attach(hosts, storage)
    return hosts


def attach(hosts: HostCache, storage: bool) -> None:
    hosts.attach(HostPoolSpec("pool", 64, "epoch-l3" if storage else "epoch", storage))
    assert hosts.take_attachment() is not None


def finish(hosts: HostCache, tokens: list[int], step: int, salt: str | None = None) -> None:
    """A finished request's pages enter the tree; the next plan carries their backups and
    its result comes back."""
    cache = hosts.cache
    count = len(tokens) // PAGE
    cache.evict(count - cache.allocator.num_free)  # as the scheduler's allocation does
    pages = cache.allocator.alloc(count)
    assert pages is not None
    cached = cache.insert(tokens, pages, salt) // PAGE
    cache.allocator.free(pages[:cached])
    hosts.take_copies(step)
    hosts.acknowledge(step)


def nodes(cache: HiRadixCache) -> list[RadixNode]:
    found, stack = [], [child for root in cache._roots for child in root.children.values()]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(node.children.values())
    return found


def test_a_host_pool_without_l3_hashes_no_page() -> None:
    hosts = host_cache(num_pages=8, storage=False)
    for step, first in enumerate(range(100, 160, 10), start=1):
        finish(hosts, list(range(first, first + 6)), step)  # 3 pages each: evicts to host
    cache = hosts.cache
    assert cache.tier.num_prefetching == 0 and cache.host.num_free < 64
    assert any(not node.page_ids for node in nodes(cache)), "some pages live in host memory only"
    assert all(not node.page_keys for node in nodes(cache))
    assert not cache.host.keys and not hosts.take_stores()
    cache.check_consistency()


def test_keys_hashed_once_l3_comes_on_continue_the_chain() -> None:
    hosts = host_cache(num_pages=32, storage=False, policy="write_through_selective")
    prompt = list(range(10, 18))
    finish(hosts, prompt, 1)  # on the device, not backed up (no reuse yet), no keys
    attach(hosts, storage=True)  # a hicache service with L3 (a new epoch)
    longer = prompt + [40, 41, 42, 43]
    finish(hosts, longer, 2)
    chain = page_keys(NAMESPACE.root(), longer, PAGE)
    # A hit inside the prompt's edge splits it and backs up the part it covers, whose keys
    # are hashed now: the first 3 of the chain, for L3.
    match = hosts.cache.match_prefix(longer[:6])
    hosts.take_copies(3)
    hosts.acknowledge(3)
    slots = match.handle.host_slots
    assert len(slots) == 3
    assert sorted(hosts.take_stores()) == sorted(zip(chain[:3], slots, strict=True))
    # The pages past the match continue the chain (a prefetch would look them up in L3).
    assert hosts.cache.keys_past(match, longer[6:]) == chain[3:]
    hosts.cache.check_consistency()


def test_late_keys_of_a_salted_request_chain_from_its_salt() -> None:
    hosts = host_cache(num_pages=32, storage=False)
    tokens = [5, 6, 7, 8]
    finish(hosts, tokens, 1, salt="tenant")
    attach(hosts, storage=True)
    match = hosts.cache.match_prefix(tokens, "tenant")
    salted = NAMESPACE.with_salt("tenant").root()
    assert hosts.cache.keys_past(match, [9, 10]) == page_keys(salted, tokens + [9, 10], PAGE)[2:]
    assert hosts.cache.keys_past(match, [9, 10]) != page_keys(NAMESPACE.root(),
                                                              tokens + [9, 10], PAGE)[2:]
