"""The worker's entry check of a step plan, before any of it is applied.

A plan naming a token id outside the vocabulary, or a position or page beyond the context
window or the KV pool, would fail the forward pass (an IndexError deep in the model) after
part of the plan changed the worker's state. Checked first, such a plan is refused whole, with
the ids of the requests at fault, and nothing changes: the scheduler can fail those requests
and carry on with the others. Only what the plan says of its requests is checked here; page
copies are `host_kv.check_copies`'s, and whether the plan follows from the worker's state (a
chunk starting at the request's KV length) is RequestTable's (both raise PlanError).
"""

from __future__ import annotations

from collections.abc import Iterable

from radixmesh.services.worker.request_table import PlanError
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.request_checks import check_token_ids
from radixmesh.shared.step import StepPlan, WorkerInfo
from radixmesh.shared.text_checks import check_rid


class PlanRejectedError(PlanError):
    """A plan the worker refused before applying any of it. `rids` names the requests at
    fault (empty when the fault is in no one request, e.g. a page copy)."""

    def __init__(self, step_id: int, rids: tuple[str, ...], reason: str) -> None:
        who = f" (requests {', '.join(map(repr, rids))})" if rids else ""
        super().__init__(f"step {step_id} refused{who}: {reason}")
        self.step_id, self.rids, self.reason = step_id, rids, reason


def check_plan(plan: StepPlan, info: WorkerInfo) -> None:
    """Raises PlanRejectedError naming every request at fault, with the first fault of each."""
    faults: dict[str, str] = {}
    for rid, reason in _request_faults(plan, info):
        faults.setdefault(rid, reason)
    if faults:
        reasons = "; ".join(f"{rid!r}: {reason}" for rid, reason in faults.items())
        raise PlanRejectedError(plan.step_id, tuple(faults), reasons)


def _request_faults(plan: StepPlan, info: WorkerInfo) -> Iterable[tuple[str, str]]:
    """(rid, reason) for each fault of a request in the plan."""
    max_pages = -(-info.context_len // info.page_size)  # a request's pages, at most
    for new in plan.new_requests:
        try:
            check_rid(new.rid)
            check_token_ids(new.token_ids, info.vocab_size, "token_ids")
            new.sampling.validate(info.vocab_size)
        except InvalidRequestError as error:
            yield new.rid, str(error)
            continue
        if len(new.token_ids) > info.context_len:
            yield new.rid, (f"{len(new.token_ids)} tokens exceed the context length "
                            f"{info.context_len}")
        if not 0 <= new.num_cached_tokens <= len(new.token_ids) \
                or not 0 < new.num_prompt_tokens <= len(new.token_ids):
            yield new.rid, "cached or prompt token counts outside its tokens"
        bad = _first_outside(new.cached_page_ids, 0, info.num_pages)
        if bad is not None:
            yield new.rid, f"cached page {bad} is outside the KV pool [0, {info.num_pages}]"
    for write in plan.page_writes:
        if write.start < 0 or write.start + len(write.page_ids) > max_pages:
            yield write.rid, (f"page table write [{write.start}, "
                              f"{write.start + len(write.page_ids)}) is beyond the "
                              f"{max_pages} pages of the context length")
        bad = _first_outside(write.page_ids, 0, info.num_pages)
        if bad is not None:
            yield write.rid, f"page {bad} is outside the KV pool [0, {info.num_pages}]"
    for chunk in plan.extends:
        if chunk.start < 0 or chunk.length < 1 or chunk.start + chunk.length > info.context_len:
            yield chunk.rid, (f"extend [{chunk.start}, {chunk.start + chunk.length}) is "
                              f"outside the context length {info.context_len}")


def _first_outside(values: tuple[int, ...] | list[int], low: int, high: int) -> int | None:
    """The first value outside [low, high], or None; min/max first, at C speed."""
    if not values or (low <= min(values) and max(values) <= high):
        return None
    return next(value for value in values if not low <= value <= high)
