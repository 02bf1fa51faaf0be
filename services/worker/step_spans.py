"""The worker's `worker.step` spans (design §6): one per executed step that serves at least
one sampled request, in a trace of its own, linked to the sampled requests it serves.

A step serves many requests, so it cannot be a child of one of them; links let Jaeger show
which requests a step served. The sampled requests' contexts come with their registration
(the plan's NewRequest.trace), and each one's link is made then, once, and kept here while
tracing is on: a step with nothing sampled costs one dict check, a step while tracing is off
one attribute read.

A step links to at most MAX_STEP_LINKS requests, those it prefills first (the chunks are what
make a step slow), then those it decodes; `radixmesh.step.sampled_requests` counts them all.
Every link is work on the step thread and in the export, per step: with all of a 450-request
batch linked, tracing cost an H100 14% of its sharegpt-like throughput (the SDK itself keeps
at most 128 links a span).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from radixmesh.services.worker.forward_batch import ForwardMode
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder, now_ns
from radixmesh.shared.step import StepPlan

MAX_STEP_LINKS = 16


@dataclass(slots=True)
class StepSpan:
    """A launched step that serves a sampled request: what its span needs at the finish."""

    step_id: int
    links: list[Any]  # SpanRecorder.link_to's, at most MAX_STEP_LINKS
    num_sampled: int  # the sampled requests the step serves, linked or not
    batch_size: int
    forward_mode: str
    num_tokens: int
    start_ns: int


class StepSpans:
    """Called in step order on the worker's one step thread. Invariant: `_sampled` holds the
    sampled requests registered by plans since the last `clear` and not released since."""

    def __init__(self, recorder: SpanRecorder = DISABLED) -> None:
        self._recorder = recorder
        self._sampled: dict[str, Any] = {}  # rid -> its link

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
                sampled[new.rid] = self._recorder.link_to(new.trace)
        if not sampled:
            return None
        links = [link for chunk in plan.extends if (link := sampled.get(chunk.rid))]
        links += [link for link in map(sampled.get, plan.decodes) if link]
        if not links:
            return None
        num_extends, num_decodes = len(plan.extends), len(plan.decodes)
        return StepSpan(plan.step_id, links[:MAX_STEP_LINKS], len(links),
                        num_extends + num_decodes,
                        ForwardMode.of(num_extends, num_decodes).value,
                        plan.num_extend_tokens + num_decodes, now_ns())

    def finished(self, step: StepSpan, cuda_graph: bool) -> None:
        """The step's tokens are on the host: its span ends now."""
        self._recorder.record_linked("worker.step", step.links, step.start_ns, now_ns(), {
            "radixmesh.step.id": step.step_id,
            "radixmesh.step.batch_size": step.batch_size,
            "radixmesh.step.forward_mode": step.forward_mode,
            "radixmesh.step.num_tokens": step.num_tokens,
            "radixmesh.step.sampled_requests": step.num_sampled,
            "radixmesh.step.cuda_graph": cuda_graph})

    def clear(self) -> None:
        """The scheduler's stream ended: every request it registered is gone."""
        self._sampled.clear()
