"""Runs a workload through the in-process `Engine`: the baseline the mesh is measured against.

The loop is the engine's own (submit, step, read deltas) with the benchmark's clock around
it: before each step it submits every request whose arrival time has passed, and it stamps
each step's deltas when the step returns, as a client would see them arrive.
"""

from __future__ import annotations

import time
from collections import deque

from tqdm import tqdm

from radixmesh.bench.trace import RequestTrace
from radixmesh.bench.workloads import Workload, request_body
from radixmesh.engine import Engine
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.requests import TextDelta


class _EngineDriver:
    """Submits arrivals and records deltas; `in_flight` maps a request id to its trace index."""

    def __init__(self, engine: Engine, workload: Workload, sampling: dict,
                 max_concurrency: int | None, bar: tqdm) -> None:
        self.engine, self.workload, self.sampling = engine, workload, sampling
        self.max_concurrency, self.bar = max_concurrency, bar
        self.traces = [RequestTrace(len(r.input_ids)) for r in workload.requests]
        # Arrivals are drawn in order, so the queue is sorted by arrival time.
        self.pending = deque(range(len(workload.requests)))
        self.in_flight: dict[str, int] = {}
        self.start = time.perf_counter()

    def seconds_to_next_arrival(self) -> float:
        arrival = self.workload.requests[self.pending[0]].arrival_s
        return self.start + arrival - time.perf_counter()

    def admit_arrived(self) -> None:
        while self.pending and self.seconds_to_next_arrival() <= 0:
            if self.max_concurrency and len(self.in_flight) >= self.max_concurrency:
                return
            self.submit(self.pending.popleft())

    def submit(self, index: int) -> None:
        rid, trace = f"bench-{index}", self.traces[index]
        trace.send_time = time.perf_counter()
        try:
            self.engine.submit(rid, request_body(self.workload.requests[index], self.sampling))
        except InvalidRequestError as error:
            trace.on_error(time.perf_counter(), str(error))
            self.bar.update(1)
            return
        self.in_flight[rid] = index

    def record(self, deltas: list[TextDelta], now: float) -> None:
        for delta in deltas:
            trace = self.traces[self.in_flight[delta.rid]]
            trace.on_chunk(now, len(delta.token_ids))
            if delta.finish is not None:
                usage = delta.usage.to_dict() if delta.usage is not None else None
                trace.on_end(now, usage, delta.finish.to_dict())
                del self.in_flight[delta.rid]
                self.bar.update(1)

    def fail_lost_requests(self) -> None:
        """Requests the engine no longer holds but never finished: counted as failures."""
        now = time.perf_counter()
        for index in self.in_flight.values():
            self.traces[index].on_error(now, "the engine dropped the request without finishing")
            self.bar.update(1)
        self.in_flight.clear()


def run_on_engine(engine: Engine, workload: Workload, sampling: dict,
                  max_concurrency: int | None = None,
                  progress: bool = True) -> list[RequestTrace]:
    """Runs every request of `workload` to its end; one trace per request, in workload order."""
    with tqdm(total=len(workload.requests), disable=not progress, unit="req",
              desc=f"{workload.name} (offline)") as bar:
        driver = _EngineDriver(engine, workload, sampling, max_concurrency, bar)
        while driver.pending or engine.has_work:
            driver.admit_arrived()
            if not engine.has_work:
                driver.fail_lost_requests()
                if driver.pending:
                    time.sleep(max(0.0, driver.seconds_to_next_arrival()))
                continue
            deltas = engine.step()
            driver.record(deltas, time.perf_counter())
        driver.fail_lost_requests()
    return driver.traces
