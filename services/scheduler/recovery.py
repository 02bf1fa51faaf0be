"""A new Scheduler for a new worker, carrying over what outlives the old one.

A worker that comes back, the same process continued or a new one, holds no KV the scheduler
can trust: a new process has an empty pool, and a stopped one had its requests released when
its stream was abandoned. So the whole Scheduler is rebuilt from the worker's info (its pool,
page size, slots and KV layout may differ: `--worker null` may replace `--worker model`): an
empty prefix cache and allocator, no host pool until the hicache link attaches one again.

What carries over: the requests still waiting (in their order; one retracted earlier keeps
its output and goes first, as it would have), and the counters the front door exports (so
they never go backwards).
"""

from __future__ import annotations

import logging

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.request import CachedTiers, SchedReq
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.step import WorkerInfo

logger = logging.getLogger(__name__)


def misfits(old: Scheduler, info: WorkerInfo) -> list[str]:
    """Waiting requests whose prompt and output the worker described by `info` cannot hold:
    the caller ends them (UNAVAILABLE) before rebuilding."""
    page_size = info.page_size
    return [req.rid for req in old.waiting
            if -(-(len(req.input_ids) + req.sampling.max_new_tokens) // page_size)
            > info.num_pages]


def rebuild_scheduler(old: Scheduler, config: SchedulerConfig, info: WorkerInfo) -> Scheduler:
    """The Scheduler for the worker described by `info`, holding `old`'s waiting requests
    (`old` keeps none). `old` must have no running request (`SchedulerLoop.detach_worker`
    ended them) and no misfit; its page accounting is checked first, so a leak is caught
    where it happened."""
    assert not old.running, "end the running requests before rebuilding"
    old.check_integrity()
    new = Scheduler(config, info)
    new.stats = old.stats
    for req in old.waiting:
        if req.admitted_once:  # retracted earlier: it keeps its output and goes first
            _forget_pages(req)
            new.waiting.append(req)
        else:  # a fresh arrival in the new order; its seed was fixed at its first arrival
            new.add_request(TokenizedRequest(req.rid, req.input_ids, req.sampling, req.trace,
                                             req.cache_salt))
    old.waiting.clear()
    logger.info("scheduler rebuilt for the %s worker: %d pages of %d tokens, %d queued "
                "requests carried over", info.worker or "?", info.num_pages, info.page_size,
                len(new.waiting))
    return new


def _forget_pages(req: SchedReq) -> None:
    """What tied a waiting request to the old scheduler's pools (a retracted request holds no
    page, but may have been looked up in the old host tier)."""
    req.page_ids, req.num_tree_pages, req.cache_handle, req.kv_len = [], 0, None, 0
    req.prefetch, req.cached_tiers = None, CachedTiers()
