"""`radixmesh bench --trace-breakdown HOST:PORT`: the receiving end of the mesh's spans.

The bench listens where the mesh exports (`radixmesh up --enable-trace --otlp-traces-endpoint
HOST:PORT`), gives every request its own sampled `traceparent`, so the front door makes the
request's root span a child of a span id the bench chose, and after the run waits, a bounded
few seconds, for those traces' spans.
"""

from __future__ import annotations

import time

from radixmesh.bench.span_receiver import ReceivedSpan, SpanReceiver
from radixmesh.bench.trace_breakdown import RequestParent, breakdown

# For every request's root span after the run: the front door ends it last, and each service
# exports twice a second (shared/span_queue.py), so a mesh that traces answers well within it.
ROOTS_WAIT_S = 5.0
# Then until no span came for this long, for other services' last batches.
QUIET_S = 1.0
QUIET_WAIT_S = 3.0


class TraceCollector:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.parents: list[RequestParent] = []
        self._receiver = SpanReceiver(endpoint)

    def start(self) -> TraceCollector:
        """Listens at the endpoint; ValueError (the reason, for the user) if it cannot."""
        try:
            self._receiver.start()
        except (OSError, RuntimeError) as error:  # grpc raises RuntimeError on a bad bind
            raise ValueError(f"--trace-breakdown: cannot listen for spans at {self.endpoint} "
                             f"(in use, or not this machine's?): {error}") from None
        return self

    def stop(self) -> None:
        self._receiver.stop()

    @property
    def address(self) -> str:
        """Where it listens (the port resolved once started)."""
        return self._receiver.address

    def traceparents(self, count: int) -> list[str]:
        """`count` new requests' traceparents, remembered for `collect`."""
        new = [RequestParent.new() for _ in range(count)]
        self.parents.extend(new)
        return [parent.traceparent for parent in new]

    def next_traceparent(self) -> str:
        """One new request's traceparent (a closed loop makes its requests one by one)."""
        return self.traceparents(1)[0]

    @property
    def trace_ids(self) -> set[str]:
        return {parent.trace_id for parent in self.parents}

    def collect(self, roots_wait_s: float = ROOTS_WAIT_S) -> list[ReceivedSpan]:
        """The spans of the requests' traces that arrived, waiting a bounded time for them."""
        roots = {(parent.trace_id, parent.span_id) for parent in self.parents}

        def every_root_arrived(spans: list[ReceivedSpan]) -> bool:
            return roots <= {(span.trace_id, span.parent_span_id) for span in spans}

        if self._receiver.wait_for(every_root_arrived, roots_wait_s):
            self._wait_quiet()
        trace_ids = self.trace_ids
        return [span for span in self._receiver.snapshot() if span.trace_id in trace_ids]

    def report(self, roots_wait_s: float = ROOTS_WAIT_S) -> dict:
        """The result JSON's `trace_breakdown`."""
        return {"endpoint": self.address,
                **breakdown(self.collect(roots_wait_s), self.trace_ids)}

    def _wait_quiet(self) -> None:
        deadline = time.monotonic() + QUIET_WAIT_S
        count = len(self._receiver.snapshot())
        while time.monotonic() < deadline:
            time.sleep(QUIET_S)
            now = len(self._receiver.snapshot())
            if now == count:
                return
            count = now
