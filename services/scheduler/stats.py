"""Scheduler counters and SGLang-style progress log lines."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from radixmesh.services.scheduler.request import SchedReq
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
        self._window_start = time.perf_counter()
        self._window_tokens = 0

    @property
    def cache_hit_rate(self) -> float:
        return self.num_cached_tokens / self.num_prompt_tokens if self.num_prompt_tokens else 0.0

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
        num_tokens = sum(req.kv_len for req in scheduler.running.values())
        logger.info("Decode batch. #running-req: %d, #token: %d, token usage: %.2f, "
                    "cuda graph: %s, gen throughput (token/s): %.2f, #queue-req: %d",
                    len(scheduler.running), num_tokens, token_usage(scheduler), self.cuda_graph,
                    throughput, len(scheduler.waiting))


def token_usage(scheduler: Scheduler) -> float:
    """Share of the KV pool that running requests hold (cached but evictable pages count free)."""
    kv = scheduler.kv
    return 1.0 - kv.available_pages / kv.allocator.num_pages
