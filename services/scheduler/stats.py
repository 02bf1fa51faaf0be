"""Scheduler counters and SGLang-style progress log lines."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from radixmesh.services.scheduler.request import CachedTiers, SchedReq
from radixmesh.shared.mesh_info import SchedulerLoad
from radixmesh.shared.step import StepPlan, StepResult

if TYPE_CHECKING:
    from radixmesh.services.scheduler.prefill import PrefillPlan
    from radixmesh.services.scheduler.scheduler import Scheduler

logger = logging.getLogger("radixmesh.scheduler")


class SchedulerStats:
    def __init__(self, decode_log_interval: int) -> None:
        self.decode_log_interval = decode_log_interval
        self.num_prompt_tokens = 0
        self.num_cached_tokens = 0
        self.num_generated_tokens = 0
        self.num_finished = 0
        self.num_retractions = 0
        self.num_decode_steps = 0
        self.cuda_graph = False  # whether the last decode step was replayed from a CUDA graph
        # Prompt tokens served from each tier, counted once per request at its admission.
        self.cached_tokens_by_tier = {"device": 0, "host": 0, "storage": 0, "remote": 0}
        self.prefetched_tokens = 0  # brought from L3 into host memory
        self.stored_tokens = 0      # written from host memory to L3
        self.backed_up_tokens = 0   # copied from the device pool to host memory
        self.loaded_tokens = 0      # copied from host memory back to the device pool
        self.gen_throughput = 0.0  # tokens/s over the last decode log window, as SGLang's
        self._window_start = time.perf_counter()
        self._window_tokens = 0

    @property
    def cache_hit_rate(self) -> float:
        return self.num_cached_tokens / self.num_prompt_tokens if self.num_prompt_tokens else 0.0

    def on_admit(self, tiers: CachedTiers) -> None:
        by_tier = self.cached_tokens_by_tier
        by_tier["device"] += tiers.device
        by_tier["host"] += tiers.host
        by_tier["storage"] += tiers.storage
        by_tier["remote"] += tiers.remote

    def on_copies(self, num_loads: int, num_backups: int, page_size: int) -> None:
        self.loaded_tokens += num_loads * page_size
        self.backed_up_tokens += num_backups * page_size

    def on_finish(self, req: SchedReq) -> None:
        self.num_finished += 1
        self.num_prompt_tokens += len(req.input_ids)
        self.num_cached_tokens += req.num_cached_prompt_tokens

    def on_prefill(self, prefill: PrefillPlan, scheduler: Scheduler) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        cached = sum(chunk.start for chunk in prefill.chunks)
        logger.info("Prefill batch. #new-seq: %d, #new-token: %d, #cached-token: %d, "
                    "token usage: %.2f, #running-req: %d, #queue-req: %d",
                    len(prefill.chunks), prefill.num_tokens, cached, token_usage(scheduler),
                    len(scheduler.running), len(scheduler.waiting))

    def on_step(self, plan: StepPlan, result: StepResult, scheduler: Scheduler) -> None:
        num_sampled = len(result.rids)
        self.num_generated_tokens += num_sampled
        self._window_tokens += num_sampled
        if not plan.decodes:
            return
        self.cuda_graph = result.cuda_graph
        self.num_decode_steps += 1
        if self.num_decode_steps % self.decode_log_interval:
            return
        now = time.perf_counter()
        throughput = self._window_tokens / max(now - self._window_start, 1e-9)
        self._window_start, self._window_tokens = now, 0
        self.gen_throughput = throughput
        logger.info("Decode batch. #running-req: %d, #token: %d, token usage: %.2f, "
                    "cuda graph: %s, gen throughput (token/s): %.2f, #queue-req: %d",
                    len(scheduler.running), tokens_in_use(scheduler), token_usage(scheduler),
                    self.cuda_graph, throughput, len(scheduler.waiting))


def tokens_in_use(scheduler: Scheduler) -> int:
    """KV tokens the pool holds for running requests, as SGLang's `#token`: pages in use times
    the page size. Counted from the allocator, not summed per request, so a prefix that many
    requests share counts once and the figure never exceeds the pool."""
    kv = scheduler.kv
    return (kv.allocator.num_pages - kv.available_pages) * kv.page_size


def token_usage(scheduler: Scheduler) -> float:
    """Share of the KV pool that running requests hold (cached but evictable pages count free)."""
    kv = scheduler.kv
    return 1.0 - kv.available_pages / kv.allocator.num_pages


def scheduler_load(scheduler: Scheduler) -> SchedulerLoad:
    """The gauges and counters the front doors export, read off the scheduler now."""
    stats = scheduler.stats
    return SchedulerLoad(
        num_running_reqs=len(scheduler.running), num_queue_reqs=len(scheduler.waiting),
        token_usage=token_usage(scheduler), cache_hit_rate=stats.cache_hit_rate,
        num_prompt_tokens=stats.num_prompt_tokens, num_cached_tokens=stats.num_cached_tokens,
        num_generated_tokens=stats.num_generated_tokens, num_retractions=stats.num_retractions,
        cached_tokens_device=stats.cached_tokens_by_tier["device"],
        cached_tokens_host=stats.cached_tokens_by_tier["host"],
        cached_tokens_storage=stats.cached_tokens_by_tier["storage"],
        cached_tokens_remote=stats.cached_tokens_by_tier["remote"],
        prefetched_tokens=stats.prefetched_tokens, stored_tokens=stats.stored_tokens,
        backed_up_tokens=stats.backed_up_tokens, loaded_tokens=stats.loaded_tokens,
        gen_throughput=stats.gen_throughput)
