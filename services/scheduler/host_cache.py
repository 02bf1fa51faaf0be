"""The scheduler's side of the hierarchical cache beyond one step: which host pool is in use
(and its epoch), prefetches from L3 into host slots, and pages waiting to be stored to L3.

Plain state and decisions, no I/O: the hicache link (`hicache_link.py`) performs the calls
these methods ask for and reports back, all on the scheduler's event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from radixmesh.services.scheduler.config import PREFETCH_POLICIES, SchedulerConfig
from radixmesh.services.scheduler.host_slots import HostSlots
from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.prefix_cache.hi_radix_cache import HiRadixCache
from radixmesh.services.scheduler.remote_decision import RemoteDecider
from radixmesh.services.scheduler.request import Prefetch, SchedReq
from radixmesh.shared.host_pool import HostPoolLayout
from radixmesh.shared.mesh_info import worker_key_namespace
from radixmesh.shared.step import HostPoolAttachment, PageCopies, StepPlan, WorkerInfo

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PrefetchJob:
    """One prefetch: pages `first_page ..` of a request's prompt (keyed `keys`), into `slots`:
    the first `num_storage` read from L3, the rest fetched from the node at `remote_address`."""

    req: SchedReq
    epoch: str
    tokens: tuple[int, ...]  # the prompt's full pages
    first_page: int
    keys: list[bytes]
    slots: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    num_storage: int = 0
    remote_address: str = ""

    @property
    def num_remote(self) -> int:
        return len(self.slots) - self.num_storage


@dataclass(frozen=True, slots=True)
class HostPoolSpec:
    """What the hicache service answered to Attach."""

    name: str
    num_slots: int
    epoch: str
    storage: bool


class HostCache:
    """Invariants: the tree's host tier always belongs to `epoch`; a reply of another epoch
    changes nothing; every prefetch job's slots are counted in `num_prefetching` until it
    ends; requests wait for a prefetch only under the wait_complete and timeout policies."""

    def __init__(self, cache: HiRadixCache, key_root: bytes, prefetch_policy: str,
                 threshold_tokens: int, timeout_s: float,
                 remote: RemoteDecider | None = None) -> None:
        if prefetch_policy not in PREFETCH_POLICIES:
            raise ValueError(f"unknown --hicache-prefetch-policy {prefetch_policy!r}")
        self.cache = cache
        self.key_root = key_root
        self.policy = prefetch_policy
        self.threshold_pages = max(1, -(-threshold_tokens // cache.page_size))
        self.timeout_s = timeout_s
        self.spec: HostPoolSpec | None = None
        self.pending_spec: HostPoolSpec | None = None  # applied once queued copies went out
        self.jobs: dict[str, PrefetchJob] = {}
        self.stores: list[tuple[bytes, int]] = []
        self.remote = remote  # decides on pages another node holds; None: never fetched

    @property
    def epoch(self) -> str:
        return self.spec.epoch if self.spec else ""

    @property
    def storage(self) -> bool:
        return self.spec is not None and self.spec.storage

    # ---- the host pool and its epoch -----------------------------------------------------

    def attach(self, spec: HostPoolSpec | None) -> None:
        """The hicache service (re)started, or went away (None): its pool replaces ours."""
        self.pending_spec = spec or HostPoolSpec("", 0, "", False)

    def take_attachment(self) -> HostPoolAttachment | None:
        """At the start of a plan: switches pools when no copy of the old one is queued."""
        spec = self.pending_spec
        if spec is None or self.cache.tier.has_copies:
            return None
        self.pending_spec = None
        self.cache.drop_host_tier(HostSlots(spec.num_slots))
        self.cache.tier.keyed = spec.storage  # only stores to L3 name a slot's page by key
        self.jobs.clear()
        self.stores.clear()
        self.spec = spec if spec.num_slots else None
        logger.info("host pool %s: %d slots, epoch %s, L3 %s", spec.name or "(none)",
                    spec.num_slots, spec.epoch or "-", "on" if spec.storage else "off")
        return HostPoolAttachment(spec.name, spec.num_slots)

    # ---- copies riding on step plans -------------------------------------------------------

    @property
    def has_copies(self) -> bool:
        return self.cache.tier.has_copies or self.pending_spec is not None

    def take_copies(self, step_id: int) -> tuple[PageCopies, PageCopies]:
        if self.remote is not None:
            self.remote.prefill.planned(step_id)
        return self.cache.tier.take_copies(step_id)

    def acknowledge(self, backed_up_through: int, plan: StepPlan | None = None) -> None:
        """The worker's progress (`plan`'s result is back): backups that landed may now go
        to L3."""
        if plan is not None and self.remote is not None:
            self.remote.prefill.completed(plan)
        stores = self.cache.tier.take_stores(backed_up_through)
        if self.storage:
            self.stores.extend(stores)
        else:
            self.cache.tier.storing.clear()

    # ---- prefetch ------------------------------------------------------------------------

    def holds_back(self, req: SchedReq) -> bool:
        """Whether `req` should wait for its prefetch before it is admitted."""
        job = self.jobs.get(req.rid)
        if job is not None and job.num_remote and req.prefetch is Prefetch.FETCHING:
            # Whatever the policy: a fetch is chosen only when waiting for it beats
            # recomputing, and its deadline bounds the wait.
            return True
        if self.policy == "best_effort" or not self.storage:
            return False
        if req.prefetch is None:
            return True  # L3 not asked yet: the link does so as soon as it hears of the request
        job = self.jobs.get(req.rid)
        if job is None:
            return False
        return self.policy == "wait_complete" or time.monotonic() - job.started < self.timeout_s

    def lookup_candidates(self, waiting: Iterable[SchedReq]) -> list[PrefetchJob]:
        """New requests whose prompt extends past the cache by at least the threshold: the
        keys of those pages, for the link to ask L3 about."""
        if not self.storage:
            return []
        found = []
        for req in waiting:
            if req.prefetch is not None:
                continue
            req.prefetch = Prefetch.DONE
            tokens = req.all_ids[:req.seq_len - 1]
            match = self.cache.match_prefix(tokens, req.cache_salt)
            cached_pages = (match.num_tokens + match.num_host_tokens) // self.cache.page_size
            num_pages = len(tokens) // self.cache.page_size
            if num_pages - cached_pages < self.threshold_pages:
                continue
            page_size = self.cache.page_size
            size = num_pages * page_size
            keys = self.cache.keys_past(match, tokens[cached_pages * page_size:size])
            job = PrefetchJob(req, self.epoch, tuple(tokens[:size]), cached_pages, keys)
            self.jobs[req.rid] = job
            req.prefetch = Prefetch.LOOKING
            found.append(job)
        return found

    def start_fetch(self, job: PrefetchJob, num_in_storage: int, num_remote: int = 0,
                    remote_address: str = "") -> bool:
        """L3 holds `num_in_storage` leading pages of the job, and the node at
        `remote_address` the `num_remote` after them: grants host slots for them all (the
        remote ones only if L3's all fit). False when it is not worth it (or no slots): the
        job ends."""
        count = min(num_in_storage + num_remote, len(job.keys))
        host = self.cache.host
        if job.epoch != self.epoch or count < self.threshold_pages:
            return self.end(job)
        if count > host.num_free:
            self.cache.evict_host(count - host.num_free)
        slots = host.alloc(min(count, host.num_free), for_worker=False)
        if not slots:
            return self.end(job)
        job.slots, job.keys = slots, job.keys[:len(slots)]
        job.num_storage = min(num_in_storage, len(slots))
        job.remote_address = remote_address if job.num_remote else ""
        self.cache.tier.num_prefetching += len(slots)
        job.req.prefetch = Prefetch.FETCHING
        return True

    def finish_fetch(self, job: PrefetchJob, num_done: int) -> int:
        """The pages the hicache service placed go into the tree as host-only nodes; returns
        how many tokens were prefetched. Pages fetched from another node then go to L3 like
        any page that enters host memory (those read from L3 are there already), so this
        node keeps them past its own restart and names them in the page index."""
        if job.epoch != self.epoch:
            return 0  # the slots were of a pool that is gone
        tier, page_size = self.cache.tier, self.cache.page_size
        tier.num_prefetching -= len(job.slots)
        done = max(0, min(num_done, len(job.slots)))
        unused: list[int] = []
        # L3's pages, then the fetched ones after them: each part a node of its own tier.
        for first, last, remote in ((0, min(done, job.num_storage), False),
                                    (job.num_storage, done, True)):
            if last > first:
                end = (job.first_page + last) * page_size
                left = self.cache.insert_prefetched(job.tokens[:end], job.slots[first:last],
                                                    job.keys[first:last], remote,
                                                    job.req.cache_salt)
                if remote:
                    self._store_fetched(job.keys[first:last], job.slots[first:last], left)
                unused += left
        self.cache.host.release(unused + job.slots[done:])
        self.end(job)
        return done * page_size

    def _store_fetched(self, keys: list[bytes], slots: list[int], unused: list[int]) -> None:
        """Queues the fetched pages the tree took for L3; their slots count as being stored
        (host eviction waits for the store), as backed-up slots do once they land."""
        if not self.storage:
            return
        skipped = set(unused)
        stores = [(key, slot) for key, slot in zip(keys, slots, strict=True)
                  if slot not in skipped and slot not in self.cache.tier.storing]
        self.cache.tier.storing.update(slot for _, slot in stores)
        self.stores.extend(stores)

    def end(self, job: PrefetchJob) -> bool:
        """The job is over (nothing fetched, or its pages are in): its request goes on."""
        self.jobs.pop(job.req.rid, None)
        job.req.prefetch = Prefetch.DONE
        return False

    # ---- stores to L3 --------------------------------------------------------------------

    def take_stores(self) -> list[tuple[bytes, int]]:
        stores, self.stores = self.stores, []
        return stores if self.storage else []

    def stored(self, slots: list[int], epoch: str) -> None:
        if epoch == self.epoch:
            self.cache.tier.storing.difference_update(slots)


def build_host_cache(config: SchedulerConfig, worker: WorkerInfo,
                     allocator: PageAllocator) -> HostCache | None:
    """The tiered cache of `--enable-hierarchical-cache`, with no host pool until the hicache
    service attaches one; None when the flag is off or the worker holds no KV."""
    if not config.enable_hierarchical_cache or config.disable_radix_cache:
        return None
    if worker.kv_dtype == "none":
        logger.warning("--enable-hierarchical-cache: the %s worker holds no KV; ignored",
                       worker.worker or "null")
        return None
    # The one derivation routers and the page index use too: keys must match across them.
    namespace = worker_key_namespace(worker)
    assert namespace is not None  # the worker holds KV
    key_root = namespace.root()
    cache = HiRadixCache(worker.page_size, allocator, HostSlots(0),
                         config.hicache_write_policy, namespace)
    remote = RemoteDecider(config.hicache_remote_policy, config.hicache_remote_bandwidth,
                           config.hicache_remote_prefill_speed, _page_bytes(worker),
                           worker.page_size)
    return HostCache(cache, key_root, config.hicache_prefetch_policy,
                     config.hicache_prefetch_threshold, config.hicache_prefetch_timeout, remote)


def _page_bytes(worker: WorkerInfo) -> int:
    """Bytes of one page in every tier (all tensor-parallel ranks' parts); 0 for a worker that
    reports no KV layout (an older one), whose fetches are then priced at bandwidth alone."""
    if min(worker.num_layers, worker.num_kv_heads, worker.head_dim) < 1:
        return 0
    return HostPoolLayout(
        num_slots=1, num_layers=worker.num_layers, page_size=worker.page_size,
        num_kv_heads=worker.num_kv_heads, head_dim=worker.head_dim, dtype=worker.kv_dtype,
        tp_size=worker.tp_size).bytes_per_slot
