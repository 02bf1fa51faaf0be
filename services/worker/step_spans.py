"""The worker's `worker.step` spans (design §6): one per executed step that serves at least
one sampled request, in a trace of its own, linked to each sampled request's context.

A step serves many requests, so it cannot be a child of one of them; links let Jaeger show
the step from every request it served. The sampled requests' contexts come with their
registration (the plan's NewRequest.trace, which the worker's request state also keeps) and
are mirrored here while tracing is on, so a step with nothing sampled costs one dict check
and a step while tracing is off costs one attribute read.
"""

from __future__ import annotations

from dataclasses import dataclass

from radixmesh.services.worker.forward_batch import ForwardMode
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder, now_ns
from radixmesh.shared.step import StepPlan
from radixmesh.shared.trace_context import TraceContext


@dataclass(slots=True)
class StepSpan:
    """A launched step that serves a sampled request: what its span needs at the finish."""

    step_id: int
    links: list[TraceContext]
    batch_size: int
    forward_mode: str
    num_tokens: int
    start_ns: int


class StepSpans:
    """Called in step order on the worker's one step thread. Invariant: `_sampled` holds the
    sampled requests registered by plans since the last `clear` and not released since."""

    def __init__(self, recorder: SpanRecorder = DISABLED) -> None:
        self._recorder = recorder
        self._sampled: dict[str, TraceContext] = {}

    def launching(self, plan: StepPlan) -> StepSpan | None:
        """Before `plan` is launched: its span, if one of its requests is sampled."""
        if not self._recorder.enabled:
            return None
        sampled = self._sampled
        if sampled:
            for rid in plan.released:  # released before registered, as the worker applies them
                sampled.pop(rid, None)
        for new in plan.new_requests:
            if new.trace.sampled:
                sampled[new.rid] = new.trace
        if not sampled:
            return None
        links = [trace for chunk in plan.extends if (trace := sampled.get(chunk.rid))]
        links += [trace for trace in map(sampled.get, plan.decodes) if trace]
        if not links:
            return None
        num_extends, num_decodes = len(plan.extends), len(plan.decodes)
        return StepSpan(plan.step_id, links, num_extends + num_decodes,
                        ForwardMode.of(num_extends, num_decodes).value,
                        plan.num_extend_tokens + num_decodes, now_ns())

    def finished(self, step: StepSpan, cuda_graph: bool) -> None:
        """The step's tokens are on the host: its span ends now."""
        self._recorder.record_linked("worker.step", step.links, step.start_ns, now_ns(), {
            "radixmesh.step.id": step.step_id,
            "radixmesh.step.batch_size": step.batch_size,
            "radixmesh.step.forward_mode": step.forward_mode,
            "radixmesh.step.num_tokens": step.num_tokens,
            "radixmesh.step.cuda_graph": cuda_graph})

    def clear(self) -> None:
        """The scheduler's stream ended: every request it registered is gone."""
        self._sampled.clear()
