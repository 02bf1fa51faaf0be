"""Plans a decode step: one more token for every decoding request, retracting if KV runs out."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.services.scheduler.kv_manager import KVManager
from radixmesh.services.scheduler.request import SchedReq
from radixmesh.shared.step import PageTableWrite


@dataclass
class DecodePlan:
    decoding: list[SchedReq] = field(default_factory=list)
    page_writes: list[PageTableWrite] = field(default_factory=list)
    retracted: list[SchedReq] = field(default_factory=list)


def retraction_order(req: SchedReq) -> tuple[int, int]:
    """Smaller sorts first = retracted first: least output to redo, then the longest prompt,
    whose pages relieve the pool most (its prefix usually stays cached for the re-run)."""
    return (len(req.output_ids), -len(req.input_ids))


def prefix_order(req: SchedReq) -> int:
    """The batch order of decodes: requests that share a prompt prefix share its first page,
    so sorting by it puts them side by side, where the attention kernel reads their common KV
    at about the same time and finds it in the GPU's cache (shared-prefix traffic re-reads each
    group's prefix once per request otherwise)."""
    return req.page_ids[0] if req.page_ids else -1


class DecodePlanner:
    def __init__(self, kv: KVManager) -> None:
        self.kv = kv

    def plan(self, decoding: list[SchedReq], preemptible: list[SchedReq],
             results_pending: bool) -> DecodePlan:
        """`preemptible` holds running requests that are not decoding (a prompt mid-chunking):
        they need no page now but hold some, and are retracted before any decoder. With
        `results_pending`, steps in flight will finish requests and free pages, so a last
        decoder that does not fit waits a step instead of failing."""
        plan = DecodePlan(decoding=list(decoding))
        if self._pages_needed(plan.decoding) > self.kv.available_pages:
            self._retract(plan, list(preemptible), results_pending)
        self._grow(plan)
        return plan

    def _retract(self, plan: DecodePlan, victims: list[SchedReq], results_pending: bool) -> None:
        """Retracts `victims`, then decoders in retraction order, until the rest fit."""
        plan.decoding.sort(key=retraction_order, reverse=True)
        while plan.decoding and self._pages_needed(plan.decoding) > self.kv.available_pages:
            if victims:
                victim = victims.pop()
            elif len(plan.decoding) > 1:
                victim = plan.decoding.pop()
            elif results_pending:
                plan.decoding = []
                break
            else:
                raise RuntimeError(
                    f"request {plan.decoding[0].rid} alone does not fit in the KV pool; "
                    "admission control should have rejected it")
            self.kv.release(victim, computed_tokens=min(victim.kv_len, victim.seq_len))
            plan.retracted.append(victim)

    def plan_if_fits(self, decoding: list[SchedReq]) -> DecodePlan | None:
        """A decode of every request in `decoding`, or None if their pages do not all fit now
        (a step that mixes decodes into a prefill never retracts: the decodes wait instead)."""
        if self._pages_needed(decoding) > self.kv.available_pages:
            return None
        plan = DecodePlan(decoding=list(decoding))
        self._grow(plan)
        return plan

    def _grow(self, plan: DecodePlan) -> None:
        plan.decoding.sort(key=prefix_order)
        writes = self.kv.add_page_each(self._growing(plan.decoding))
        assert writes is not None, "pages were counted as available above"
        plan.page_writes.extend(writes)
        for req in plan.decoding:
            req.kv_len += 1

    def _growing(self, decoding: list[SchedReq]) -> list[SchedReq]:
        """Those of `decoding` whose next token starts a new page: one page each, needed only
        every page_size tokens."""
        page_size = self.kv.page_size
        return [req for req in decoding if req.kv_len >= len(req.page_ids) * page_size]

    def _pages_needed(self, decoding: list[SchedReq]) -> int:
        return len(self._growing(decoding))
