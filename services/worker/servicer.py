"""The Worker gRPC service: a thin layer over a ModelWorker.

Plans are decoded, executed and encoded on the worker's one dedicated thread, in arrival
order, so model math never blocks the event loop and the worker's state is only ever touched
by that thread. The event loop meanwhile keeps reading the stream: with a pipelined scheduler
the next plan is already waiting when a step ends.

Every Execute stream starts from a clean worker: whatever an earlier stream left (requests
registered, a host pool mapped, a step launched and never finished because its scheduler gave
up on it, e.g. after this process was stopped and continued) is dropped first, on the step
thread, before the new stream's first plan. The stream opens with the handshake
(`shared/mesh_protocol.py`): `Hello` first, then a stream whose metadata names this instance,
acknowledged by sending the initial metadata once the stream is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from radixmesh.services.worker.base import LaunchedStep, ModelWorker
from radixmesh.services.worker.metrics import WorkerMetrics
from radixmesh.services.worker.plan_checks import PlanRejectedError, check_plan
from radixmesh.services.worker.step_spans import StepSpan, StepSpans
from radixmesh.shared import wire
from radixmesh.shared.mesh_protocol import HOST_KV, STREAM_ACK, Hello, PageLayout
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.request_checks import encode_refused_rids
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder
from radixmesh.shared.step import HostPoolAttachment, StepPlan, WorkerInfo

logger = logging.getLogger(__name__)
# How long a new Execute stream waits for the previous one to finish its cleanup (a scheduler
# reconnecting) before it is refused as a second scheduler.
STREAM_HANDOVER_S = 1.0
# How often the stream checks whether the step in flight is done while no plan is waiting.
READY_POLL_S = 0.0002


@dataclass(slots=True)
class _Inflight:
    step: LaunchedStep
    launch_seconds: float
    idle_seconds: float | None
    span: StepSpan | None  # set when the step serves a sampled request


async def _read_plans(request_iterator: AsyncIterator[internal_pb2.StepPlan],
                      plans: asyncio.Queue[internal_pb2.StepPlan | None]) -> None:
    """Moves plans from the stream into `plans`, then None when the stream ends."""
    try:
        async for message in request_iterator:
            plans.put_nowait(message)
    finally:
        plans.put_nowait(None)


def worker_hello(info: WorkerInfo) -> Hello:
    """What this worker says in the handshake: its model and, if it holds KV, the layout."""
    holds_kv = info.kv_dtype != "none"
    layout = (PageLayout(info.page_size, info.num_layers, info.num_kv_heads, info.head_dim,
                         info.kv_dtype) if holds_kv else None)
    return Hello("worker", implementation=info.worker, model_id=info.model_id,
                 capabilities=(STREAM_ACK, HOST_KV) if holds_kv else (STREAM_ACK,),
                 layout=layout)


class WorkerServicer(internal_pb2_grpc.WorkerServicer):
    """Serves one Execute stream at a time: the worker's per-request state belongs to the
    scheduler at the other end. A stream starts and ends by releasing every request the worker
    holds (and the host pool mapping), so a restarted or reconnecting scheduler meets a clean
    worker.

    `idle_seconds` of a step is the time from the end of the previous step's finish to the
    start of this one's launch, counted only while the worker held requests (a worker with
    nothing to do is not waiting on the scheduler): the cost of the scheduler and the wire,
    which pipelining hides. With overlap a launch usually precedes the previous finish, and
    nothing is counted.
    """

    def __init__(self, worker: ModelWorker, executor: ThreadPoolExecutor,
                 metrics: WorkerMetrics | None = None,
                 recorder: SpanRecorder = DISABLED) -> None:
        self._worker = worker
        self._spans = StepSpans(recorder)  # touched on the executor thread only
        self._executor = executor  # exactly one thread
        self._metrics = metrics
        info = worker.info()
        self._info = wire.worker_info_to_proto(info)
        self.hello = worker_hello(info)
        self._stream_open = False
        # Both read and written on the executor thread only.
        self._last_step_end: float | None = None
        self._registered: set[str] = set()  # rids registered and not released, any stream
        self._unfinished: deque[_Inflight] = deque()  # launched, not finished, in order

    async def GetInfo(self, request: common_pb2.Empty,
                      context: grpc.aio.ServicerContext) -> internal_pb2.WorkerInfo:
        return self._info

    async def Hello(self, request: internal_pb2.PeerHello,
                    context: grpc.aio.ServicerContext) -> internal_pb2.PeerHello:
        """Answers with this worker's hello whatever the caller's: the caller decides whether
        it can use this worker, and says why not in its own log."""
        caller = Hello.from_message(request)
        if caller.protocol_version != self.hello.protocol_version:
            logger.warning("%s greets this worker, which speaks protocol %d", caller.describe(),
                           self.hello.protocol_version)
        return internal_pb2.PeerHello(**self.hello.fields())

    async def Execute(self, request_iterator: AsyncIterator[internal_pb2.StepPlan],
                      context: grpc.aio.ServicerContext) -> None:
        refusal = self.hello.refusal(dict(context.invocation_metadata() or ()))
        if refusal is not None:
            logger.warning("refused an Execute stream: %s", refusal)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        if not await self._claim_stream():
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "another scheduler holds this worker's Execute stream")
        plans: asyncio.Queue[internal_pb2.StepPlan | None] = asyncio.Queue()
        reader = asyncio.create_task(_read_plans(request_iterator, plans))
        try:
            self._queue_reset()  # before any plan of this stream, on the same thread
            await context.send_initial_metadata(())  # the acknowledgement: the stream is ours
            await self._serve_plans(plans, context)
        finally:
            reader.cancel()
            self._queue_reset()
            self._stream_open = False

    async def _serve_plans(self, plans: asyncio.Queue[internal_pb2.StepPlan | None],
                           context: grpc.aio.ServicerContext) -> None:
        """Launches each plan as soon as it arrives, before finishing the step in flight, so
        the device always has the next step queued while the scheduler plans the one after;
        a step is finished early only when no plan is waiting to be launched behind it."""
        loop = asyncio.get_running_loop()
        inflight: _Inflight | None = None
        while True:
            if inflight is not None and plans.empty():
                while plans.empty() and not inflight.step.ready():
                    await asyncio.sleep(READY_POLL_S)
                if plans.empty():  # it finished first: its tokens go out now
                    await context.write(await loop.run_in_executor(
                        self._executor, self._finish, inflight))
                    inflight = None
                    continue
            message = await plans.get()
            if message is None:
                break
            try:
                launched = await loop.run_in_executor(self._executor, self._launch, message,
                                                      inflight is None)
            except PlanRejectedError as error:  # refused whole, before any of it applied
                logger.warning("%s", error)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error),
                                    trailing_metadata=encode_refused_rids(error.rids))
            except Exception as error:  # a plan the worker cannot follow: a bug upstream
                logger.exception("step %d failed", message.step_id)
                await context.abort(grpc.StatusCode.INTERNAL, f"step failed: {error}")
            if inflight is not None:
                await context.write(await loop.run_in_executor(
                    self._executor, self._finish, inflight))
            inflight = launched
        if inflight is not None:
            await loop.run_in_executor(self._executor, self._finish, inflight)

    async def _claim_stream(self) -> bool:
        deadline = time.monotonic() + STREAM_HANDOVER_S
        while self._stream_open:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        self._stream_open = True
        return True

    # ---- on the executor thread -----------------------------------------------------------

    def _launch(self, message: internal_pb2.StepPlan, device_idle: bool) -> _Inflight:
        plan = wire.plan_from_proto(message)
        check_plan(plan, self._worker.info())  # before anything of it changes the worker
        waited_on_scheduler = (device_idle and self._worker.num_requests > 0
                               and self._last_step_end is not None)
        start = time.perf_counter()
        idle = start - self._last_step_end if waited_on_scheduler else None
        span = self._spans.launching(plan)
        step = self._worker.launch(plan)
        self._registered.difference_update(plan.released)
        self._registered.update(new.rid for new in plan.new_requests)
        inflight = _Inflight(step, time.perf_counter() - start, idle, span)
        self._unfinished.append(inflight)
        return inflight

    def _finish(self, inflight: _Inflight) -> internal_pb2.StepResult:
        self._unfinished.remove(inflight)
        start = time.perf_counter()
        result = self._worker.finish(inflight.step)
        end = time.perf_counter()
        self._last_step_end = end
        busy = inflight.launch_seconds + (end - start)
        if self._metrics is not None:
            self._metrics.observe_step(busy, inflight.idle_seconds)
        if inflight.span is not None:
            self._spans.finished(inflight.span, result.cuda_graph)
        return wire.result_to_proto(result, forward_seconds=busy,
                                    idle_seconds=inflight.idle_seconds or 0.0)

    def _queue_reset(self) -> None:
        """Queues `_reset` without awaiting it (this may run while the call is cancelled):
        the one executor thread runs it before any step queued after it."""
        with contextlib.suppress(RuntimeError):  # the executor is shut: we are exiting
            self._executor.submit(self._reset)

    def _reset(self) -> None:
        """Back to a worker that holds nothing: steps launched by an abandoned stream end
        (their tokens go nowhere), every registered request is released and the host pool
        mapping dropped (the next scheduler sends its own)."""
        self._last_step_end = None
        self._spans.clear()
        while self._unfinished:
            try:
                self._worker.finish(self._unfinished.popleft().step)
            except Exception:
                logger.exception("a step of an abandoned stream failed")
        released, self._registered = sorted(self._registered), set()
        if released:
            logger.warning("releasing %d requests an earlier Execute stream left registered",
                           len(released))
        try:
            self._worker.execute(StepPlan(step_id=-1, released=released,
                                          host_pool=HostPoolAttachment("", 0)))
        except Exception:
            logger.exception("could not reset the worker for the next Execute stream")
