"""The scheduler: request state machine, admission, batch formation, stop conditions.

It never touches tensors. Each `schedule()` returns the next StepPlan; each StepResult fed to
`process_result()` advances the requests and yields their new tokens.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from dataclasses import replace

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.decode import DecodePlanner
from radixmesh.services.scheduler.host_cache import build_host_cache
from radixmesh.services.scheduler.kv_manager import KVManager
from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.pending_prefixes import PREFIX_TOKENS, PendingPrefixes
from radixmesh.services.scheduler.policy import order_waiting
from radixmesh.services.scheduler.prefill import PrefillPlan, PrefillPlanner
from radixmesh.services.scheduler.prefix_cache import make_prefix_cache
from radixmesh.services.scheduler.request import ReqStatus, SchedReq
from radixmesh.services.scheduler.stats import SchedulerStats
from radixmesh.services.scheduler.stop_conditions import StopRule, check_stop
from radixmesh.services.scheduler.token_ratio import NewTokenRatio
from radixmesh.services.scheduler.waiting_queue import WaitingQueue
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.requests import FinishKind, FinishReason, TokenDelta, TokenizedRequest, Usage
from radixmesh.shared.step import NewRequest, PageTableWrite, StepPlan, StepResult, WorkerInfo

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: SchedulerConfig, worker: WorkerInfo) -> None:
        self.config = config
        self.worker = worker
        self.max_running = min(config.max_running_requests or worker.max_running_requests,
                               worker.max_running_requests)
        allocator = PageAllocator(worker.num_pages)
        self.host_cache = build_host_cache(config, worker, allocator)
        cache = (self.host_cache.cache if self.host_cache is not None else
                 make_prefix_cache(config.disable_radix_cache, worker.page_size, allocator))
        self.kv = KVManager(allocator, cache, worker.page_size,
                            share_running_prefixes=not config.disable_radix_cache)
        chunk_budget = None if config.chunked_prefill_size == -1 else config.chunked_prefill_size
        self.pending_prefixes = None if config.disable_radix_cache else PendingPrefixes()
        self.prefill_planner = PrefillPlanner(
            self.kv, chunk_budget, self.max_running, self.pending_prefixes,
            self.host_cache.holds_back if self.host_cache is not None else None)
        self.decode_planner = DecodePlanner(self.kv)
        self.ratio = NewTokenRatio(config.schedule_conservativeness)
        self.eos_token_ids = frozenset(worker.eos_token_ids)
        self.stats = SchedulerStats(config.decode_log_interval)
        self.waiting = WaitingQueue()  # by rid: the duplicate check and aborts are O(1)
        self.running: dict[str, SchedReq] = {}
        self.partial: SchedReq | None = None  # a prompt in the middle of chunked prefill
        self._released: list[str] = []
        # Remaps from process_result, sent with the next plan before its own writes.
        self._pending_writes: dict[str, list[PageTableWrite]] = {}
        # Plans sent but whose results are not processed yet, oldest first. The worker runs them
        # in order, so any plan made now executes after them: metadata may run ahead of KV.
        self._inflight: deque[StepPlan] = deque()
        self._step_id = 0
        self._arrivals = 0
        self._seeds = random.Random(config.random_seed)
        logger.info("max_total_num_tokens=%d, chunked_prefill_size=%d, max_running_requests=%d, "
                    "context_len=%d, available_gpu_mem=%.2f GB", worker.max_total_tokens,
                    config.chunked_prefill_size, self.max_running, worker.context_len,
                    worker.available_memory_gb)

    # ---- requests in and out -------------------------------------------------------------

    def add_request(self, request: TokenizedRequest) -> None:
        """Queues a new request; InvalidRequestError if its id is waiting or running here.

        Invariant: an id is in use exactly while its request is in `waiting` or `running`
        (the two are disjoint); a finished or aborted request's id may be used again. Both
        are keyed by id, so the check is O(1) per arrival."""
        if request.rid in self.running or request.rid in self.waiting:
            raise InvalidRequestError("rid", f"request id {request.rid!r} is already in use")
        max_len = len(request.input_ids) + request.sampling.max_new_tokens
        if self.kv.pages_for(max_len) > self.worker.num_pages:
            raise InvalidRequestError(
                "max_new_tokens", f"prompt ({len(request.input_ids)}) + max_new_tokens "
                f"({request.sampling.max_new_tokens}) exceeds the KV pool "
                f"({self.worker.max_total_tokens} tokens)")
        self._arrivals += 1
        sampling = request.sampling
        if sampling.seed is None:
            # Fixed here, not on the worker, so a retracted request resumes the same draw.
            sampling = replace(sampling, seed=self._seeds.getrandbits(62))
        rule = StopRule.of(sampling, len(request.input_ids), self.eos_token_ids,
                           self.worker.context_len)
        self.waiting.append(SchedReq(request.rid, request.input_ids, sampling,
                                     arrival=self._arrivals, trace=request.trace,
                                     cache_salt=request.cache_salt, stop_rule=rule))

    def abort(self, rid: str, finish: FinishReason | None = None) -> TokenDelta | None:
        """Ends a request wherever it is; its pages are freed at once. None if unknown."""
        finish = finish or FinishReason(FinishKind.ABORT, message="aborted")
        req = self.waiting.pop(rid)
        if req is not None:
            return self._finish(req, finish)
        req = self.running.get(rid)
        return None if req is None else self._finish(req, finish)

    @property
    def has_work(self) -> bool:
        """True while requests remain or the worker has yet to hear of finished ones (or of
        copies between the tiers)."""
        return bool(self.waiting or self.running or self._released
                    or (self.host_cache is not None and self.host_cache.has_copies))

    # ---- one step --------------------------------------------------------------------------

    def schedule(self) -> StepPlan | None:
        """The next step's plan, or None when there is nothing to run and nothing to release."""
        self._step_id += 1
        plan = StepPlan(self._step_id, released=self._released)
        self._released = []
        if self.host_cache is not None:
            plan.host_pool = self.host_cache.take_attachment()
        prefill, mixing = self._plan_prefill()
        if prefill.chunks:
            self._apply_prefill(plan, prefill)
            if mixing:
                self._mix_decodes(plan, prefill)
        else:
            self._plan_decode(plan)
        # Gathered only now: planning may have retracted a request whose remap was pending.
        pending = [write for writes in self._pending_writes.values() for write in writes]
        self._pending_writes = {}
        plan.page_writes = pending + plan.page_writes
        if self.host_cache is not None:
            plan.loads, plan.backups = self.host_cache.take_copies(self._step_id)
            self.stats.on_copies(len(plan.loads), len(plan.backups), self.worker.page_size)
        if plan.is_empty and not (plan.released or plan.page_writes or plan.loads
                                  or plan.backups or plan.host_pool):
            return None
        self._inflight.append(plan)
        return plan

    @property
    def num_inflight(self) -> int:
        return len(self._inflight)

    def process_result(self, result: StepResult) -> list[TokenDelta]:
        plan = self._inflight.popleft()
        assert plan.step_id == result.step_id, "results must come back in plan order"
        if self.host_cache is not None:
            self.host_cache.acknowledge(result.backed_up_through, plan)
        for chunk in plan.extends:
            req = self.running.get(chunk.rid)
            if req is not None:
                if chunk.start + chunk.length >= PREFIX_TOKENS:  # its prefix is computed now
                    self._forget_prefix(req.rid)
                remap = self.kv.share_computed(req)
                if remap is not None:
                    self._pending_writes.setdefault(req.rid, []).append(remap)
        deltas = []
        for rid, token in zip(result.rids, result.next_token_ids, strict=True):
            req = self.running.get(rid)
            if req is None:  # finished, aborted or retracted after the plan was sent
                continue
            req.output_ids.append(token)
            rule = req.stop_rule
            if token in rule.token_ids or len(req.output_ids) >= rule.max_outputs:
                finish = check_stop(req, self.eos_token_ids, self.worker.context_len)
                deltas.append(self._finish(req, finish, [token]))
            else:
                deltas.append(TokenDelta(rid, [token]))
        self.stats.on_step(plan, result, self)
        if not self.has_work:
            self.check_integrity()
        return deltas

    def check_integrity(self) -> None:
        """free + cached + in use == total pages; raises PageLeakError otherwise."""
        self.kv.check_integrity(self.running.values())

    # ---- internals -------------------------------------------------------------------------

    def _plan_prefill(self) -> tuple[PrefillPlan, bool]:
        """The prefill chunks of the next step, and whether decodes join them: with
        --enable-mixed-chunk, when they take at most half the step's token budget (more would
        starve admissions), each decode keeps one token of it."""
        if self.partial is None and not self.waiting:
            return PrefillPlan(), False  # steady decode: no pass over the running requests
        decoding = [req for req in self.running.values() if req.prefill_done]
        ordered = order_waiting(self.waiting, self.config.schedule_policy, self.kv)
        budget = self.config.chunked_prefill_size
        mixing = self.config.enable_mixed_chunk and (budget == -1 or 2 * len(decoding) <= budget)
        taken = len(decoding) if mixing else 0
        prefill = self.prefill_planner.plan(self.partial, ordered, decoding, self.ratio, taken)
        return prefill, mixing

    def _mix_decodes(self, plan: StepPlan, prefill: PrefillPlan) -> None:
        """Adds a decode of every decoding request to a prefill step, when their pages fit."""
        decoding = self._decodable(skip={chunk.rid for chunk in prefill.chunks})
        decode = self.decode_planner.plan_if_fits(decoding) if decoding else None
        if decode is None:
            return
        self.ratio.step()
        plan.decodes = [req.rid for req in decode.decoding]
        plan.page_writes += decode.page_writes

    def _apply_prefill(self, plan: StepPlan, prefill: PrefillPlan) -> None:
        self.waiting.remove_all(prefill.admitted)
        chunk_lens = {chunk.rid: chunk.length for chunk in prefill.chunks}
        for req in prefill.admitted:
            req.status = ReqStatus.RUNNING
            num_cached = req.kv_len - chunk_lens[req.rid]
            if not req.admitted_once:
                req.num_cached_prompt_tokens = num_cached
                req.admitted_once = True
                self.stats.on_admit(req.cached_tiers)
            self.running[req.rid] = req
            cached_pages = tuple(req.page_ids[:self.kv.pages_for(num_cached)])
            plan.new_requests.append(NewRequest(req.rid, req.all_ids, len(req.input_ids),
                                                num_cached, cached_pages, req.sampling,
                                                req.trace))
        self.partial = prefill.partial
        plan.extends = prefill.chunks
        plan.page_writes = prefill.page_writes
        self.stats.on_prefill(prefill, self)

    def _plan_decode(self, plan: StepPlan) -> None:
        decoding = self._decodable()
        if not decoding:
            return
        preemptible = [self.partial] if self.partial is not None else []
        decode = self.decode_planner.plan(decoding, preemptible, results_pending=bool(self._inflight))
        for req in decode.retracted:
            if req is self.partial:
                self.partial = None
            self._requeue(req)
            plan.released.append(req.rid)
        if decode.retracted:
            self.ratio.after_retraction(decode.decoding)
            logger.warning("KV pool exhausted: retracted %d requests; new_token_ratio=%.3f",
                           len(decode.retracted), self.ratio.value)
        else:
            self.ratio.step()
        plan.decodes = [req.rid for req in decode.decoding]
        plan.page_writes = decode.page_writes

    def _forget_prefix(self, rid: str) -> None:
        if self.pending_prefixes is not None:
            self.pending_prefixes.discard(rid)

    def _decodable(self, skip: frozenset[str] | set[str] = frozenset()) -> list[SchedReq]:
        """Running requests that may decode a token now (`skip`: those extending this step).
        A request may not when the steps in flight already produce its last allowed token."""
        return [req for req in self.running.values()
                if req.prefill_done and req.kv_len + 1 < req.stop_rule.max_seq_len
                and req.rid not in skip]

    def _requeue(self, req: SchedReq) -> None:
        del self.running[req.rid]
        self._forget_prefix(req.rid)
        self._pending_writes.pop(req.rid, None)
        req.status = ReqStatus.WAITING
        req.prefill_done = False
        self.waiting.append(req)
        self.stats.num_retractions += 1

    def _finish(self, req: SchedReq, finish: FinishReason,
                tokens: list[int] | None = None) -> TokenDelta:
        if req.status is ReqStatus.RUNNING:
            # Ahead of results, kv_len may count a token whose id has not come back yet.
            self.kv.release(req, computed_tokens=min(req.kv_len, req.seq_len))
            del self.running[req.rid]
            self._forget_prefix(req.rid)
            self._pending_writes.pop(req.rid, None)
            self._released.append(req.rid)
            if self.partial is req:
                self.partial = None
        req.status = ReqStatus.FINISHED
        req.finish = finish
        self.stats.on_finish(req)
        usage = Usage(len(req.input_ids), len(req.output_ids), req.num_cached_prompt_tokens)
        return TokenDelta(req.rid, tokens or [], finish=finish, usage=usage)
