"""The worker's per-request state and how a step plan changes it: shared by every worker."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from radixmesh.services.worker.batch_builder import BatchEntry, StepRows
from radixmesh.services.worker.request_state import WorkerRequest
from radixmesh.shared.step import NewRequest, StepPlan, StepResult

PageWriteHook = Callable[[WorkerRequest, int, Sequence[int]], None]


class PlanError(ValueError):
    """A plan contradicts the worker's state: scheduler and worker disagree, a bug."""


class RequestTable:
    """Applies plans to per-request state and checks that they follow from it.

    `apply` handles releases, registrations and page-table writes, turns the plan's work
    into the step's rows (extends in order, then decodes) and advances each request past the
    step (KV length, one pending token per sample), so the next plan can be applied before
    this step's tokens are known; `commit` records the sampled tokens. Between them the worker
    runs its forward pass. A request released in between still gets its tokens committed to
    its (detached) state, which is harmless.
    """

    def __init__(self, max_slots: int, draw_seed: Callable[[], int],
                 on_register: Callable[[WorkerRequest], None] = lambda req: None,
                 on_release: Callable[[WorkerRequest], None] = lambda req: None,
                 on_pages: PageWriteHook = lambda req, start, page_ids: None) -> None:
        """`on_pages(req, start, page_ids)`: pages written into `req`'s page table from
        index `start` (its cached pages at registration, then every plan's writes)."""
        self.requests: dict[str, WorkerRequest] = {}
        self.max_slots = max_slots
        self._free_slots = list(range(max_slots - 1, -1, -1))
        self._draw_seed = draw_seed
        self._on_register = on_register
        self._on_release = on_release
        self._on_pages = on_pages

    def __len__(self) -> int:
        return len(self.requests)

    def apply(self, plan: StepPlan) -> StepRows:
        for rid in plan.released:
            self._release(rid)
        for new in plan.new_requests:
            self._register(new)
        for write in plan.page_writes:
            req = self.get(write.rid)
            end = write.start + len(write.page_ids)
            req.page_table.extend([0] * (end - len(req.page_table)))
            req.page_table[write.start:end] = write.page_ids
            self._on_pages(req, write.start, write.page_ids)
        rows = StepRows(self._extends(plan), *self._decodes(plan.decodes))
        for entry in rows.extends:
            entry.req.kv_len += entry.length
            entry.req.num_pending += entry.sample
        for req in rows.decodes:
            req.kv_len += 1
            req.num_pending += 1
        return rows

    def commit(self, plan: StepPlan, rows: StepRows, next_token_ids: list[int],
               cuda_graph: bool = False) -> StepResult:
        """`next_token_ids` holds one token per sampled row, in plan order; steps commit in
        the order they were applied."""
        sampled = rows.sampled
        for req, token in zip(sampled, next_token_ids, strict=True):
            req.token_ids.append(token)
            req.num_pending -= 1
        return StepResult(plan.step_id, [req.rid for req in sampled], next_token_ids,
                          cuda_graph=cuda_graph)

    def get(self, rid: str) -> WorkerRequest:
        try:
            return self.requests[rid]
        except KeyError:
            raise PlanError(f"unknown request {rid}") from None

    def _extends(self, plan: StepPlan) -> list[BatchEntry]:
        entries = []
        for chunk in plan.extends:
            req = self.get(chunk.rid)
            if chunk.start != req.kv_len or chunk.start + chunk.length > len(req.token_ids):
                raise PlanError(f"{chunk} does not follow {req.rid}'s state: kv_len "
                                f"{req.kv_len}, {len(req.token_ids)} tokens")
            entries.append(BatchEntry(req, chunk.start, chunk.length, chunk.sample))
        return entries

    def _decodes(self, rids: list[str]) -> tuple[list[WorkerRequest], list[int]]:
        """The decoding requests and their KV lengths; one pass of cheap operations per row
        (this runs for every running request every step)."""
        requests = self.requests
        try:
            reqs = [requests[rid] for rid in rids]
        except KeyError as error:
            raise PlanError(f"unknown request {error.args[0]}") from None
        # A decode's input is the request's newest token, which has no KV yet.
        bad = next((req for req in reqs
                    if req.kv_len + 1 != len(req.token_ids) + req.num_pending), None)
        if bad is not None:
            raise PlanError(f"decode of {bad.rid} with kv_len {bad.kv_len} and "
                            f"{bad.num_tokens} tokens")
        return reqs, [req.kv_len for req in reqs]

    def _register(self, new: NewRequest) -> None:
        if new.rid in self.requests:
            raise PlanError(f"request {new.rid} registered twice")
        if not self._free_slots:
            raise PlanError(f"more than {self.max_slots} running requests")
        seed = new.sampling.seed if new.sampling.seed is not None else self._draw_seed()
        req = WorkerRequest(new.rid, list(new.token_ids), new.num_prompt_tokens,
                            new.num_cached_tokens, new.sampling, seed, self._free_slots.pop(),
                            page_table=list(new.cached_page_ids), trace=new.trace)
        self.requests[new.rid] = req
        self._on_register(req)
        if new.cached_page_ids:
            self._on_pages(req, 0, new.cached_page_ids)

    def _release(self, rid: str) -> None:
        req = self.requests.pop(rid, None)
        if req is not None:
            self._free_slots.append(req.slot)
            self._on_release(req)
