"""Chooses the prompt chunks of one prefill step: which waiting requests start, how much of each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from radixmesh.services.scheduler.kv_manager import KVManager
from radixmesh.services.scheduler.pending_prefixes import PendingPrefixes
from radixmesh.services.scheduler.request import SchedReq
from radixmesh.services.scheduler.token_ratio import NewTokenRatio
from radixmesh.shared.step import ExtendChunk, PageTableWrite


@dataclass
class PrefillPlan:
    admitted: list[SchedReq] = field(default_factory=list)   # newly running
    chunks: list[ExtendChunk] = field(default_factory=list)
    page_writes: list[PageTableWrite] = field(default_factory=list)
    partial: SchedReq | None = None                            # prompt not finished this step

    @property
    def num_tokens(self) -> int:
        return sum(chunk.length for chunk in self.chunks)


class PrefillPlanner:
    """Admits requests while the token budget of the step and the KV pool allow.

    The pool check holds back room for running requests' future tokens (see NewTokenRatio) so
    that admissions rarely force retractions later.
    """

    def __init__(self, kv: KVManager, chunk_budget: int | None, max_running: int,
                 pending: PendingPrefixes | None,
                 holds_back: Callable[[SchedReq], bool] | None = None) -> None:
        self.kv = kv
        self.chunk_budget = chunk_budget  # None: no chunking
        self.max_running = max_running
        self.pending = pending  # None: nothing is shared, so nothing is worth waiting for
        self.holds_back = holds_back  # e.g. a request waiting for its prefetch from L3

    def plan(self, partial: SchedReq | None, waiting: list[SchedReq],
             decoding: list[SchedReq], ratio: NewTokenRatio,
             tokens_taken: int = 0) -> PrefillPlan:
        """`tokens_taken` of the step's token budget are already spoken for (decodes mixed
        into the step)."""
        plan = PrefillPlan()
        budget = (self.chunk_budget if self.chunk_budget is not None else 1 << 62) - tokens_taken
        if budget <= 0 or (partial is None and not waiting):
            return plan  # nothing to prefill: skip the pass over every decoding request
        pool_tokens = self.kv.available_pages * self.kv.page_size
        pool_tokens -= sum(ratio.reserve(req) for req in decoding)
        if partial is not None:
            budget = self._extend(plan, partial, budget)
            pool_tokens -= partial.seq_len - partial.kv_len
        num_running = len(decoding) + (partial is not None)
        for req in waiting:
            if plan.partial is not None or budget <= 0 or num_running >= self.max_running:
                break
            if self.holds_back is not None and self.holds_back(req):
                continue
            match = self.kv.match(req)
            cached = match.num_tokens + match.num_host_tokens
            if self.pending is not None and self.pending.should_defer(req, cached):
                continue
            extend = req.seq_len - match.num_tokens
            need = extend + ratio.reserve(req)
            nothing_else_runs = num_running == 0 and not plan.admitted
            if need > pool_tokens and not (nothing_else_runs and extend <= pool_tokens):
                break
            self.kv.admit(req, match)
            if self._extend(plan, req, budget) == budget:  # the pool could not take it
                self.kv.release(req, computed_tokens=0)
                break
            budget -= plan.chunks[-1].length
            pool_tokens -= need
            plan.admitted.append(req)
            if self.pending is not None:
                self.pending.add(req)
            num_running += 1
        return plan

    def _extend(self, plan: PrefillPlan, req: SchedReq, budget: int) -> int:
        """Plans the next chunk of `req` within `budget` tokens; returns the budget left."""
        remaining = req.seq_len - req.kv_len
        length = remaining
        if remaining > budget:
            # Page-aligned chunks keep every later chunk starting on a fresh page; a budget
            # under one page cannot align, and progress matters more.
            aligned = budget - (req.kv_len + budget) % self.kv.page_size
            length = aligned if aligned > 0 else budget
        write = self.kv.grow(req, req.kv_len + length)
        if write is None:
            return budget
        is_last = length == remaining
        plan.chunks.append(ExtendChunk(req.rid, req.kv_len, length, sample=is_last))
        if write.page_ids:
            plan.page_writes.append(write)
        req.kv_len += length
        req.prefill_done = is_last
        if not is_last:
            plan.partial = req
        return budget - length
