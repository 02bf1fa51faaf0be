"""The real SchedulerLoop over an in-process NullWorker, stepped turn by turn (as the
in-process engine steps it): deterministic, no threads, pipelined two plans deep."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.loop import SchedulerLoop
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.services.worker.base import LaunchedStep
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.shared.requests import TokenDelta, TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder
from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo
from radixmesh.shared.token_batch import TokenBatch
from radixmesh.shared.trace_context import NO_TRACE, TraceContext

INFO = WorkerInfo(model_id="null", num_pages=512, page_size=1, context_len=1024,
                  vocab_size=512, eos_token_ids=(2,), kv_dtype="none", max_running_requests=16)


def request(rid: str, prompt_len: int, max_new_tokens: int,
            trace: TraceContext = NO_TRACE, seed_text: str | None = None) -> TokenizedRequest:
    rng = random.Random(seed_text or rid)
    prompt = tuple(rng.randrange(10, 500) for _ in range(prompt_len))
    return TokenizedRequest(rid, prompt, SamplingParams(max_new_tokens=max_new_tokens), trace)


class LoopDriver:
    def __init__(self, recorder: SpanRecorder = DISABLED, info: WorkerInfo = INFO,
                 **config) -> None:
        self.worker = NullWorker(info)
        self.scheduler = Scheduler(SchedulerConfig(**config), info)
        self.loop = SchedulerLoop(self.scheduler, self._send, self._receive, self._publish,
                                  max_inflight=2, recorder=recorder)
        self.plans: list[StepPlan] = []
        self.finishes: dict[str, TokenDelta] = {}
        self.outputs: dict[str, list[int]] = {}
        self._launched: deque[LaunchedStep] = deque()
        self._aio = asyncio.new_event_loop()

    async def _send(self, plan: StepPlan) -> None:
        self.plans.append(plan)
        self._launched.append(self.worker.launch(plan))

    async def _receive(self) -> StepResult:
        return self.worker.finish(self._launched.popleft())

    async def _publish(self, batch: TokenBatch) -> None:
        for delta in batch.deltas:
            self.outputs.setdefault(delta.rid, []).extend(delta.token_ids)
            if delta.finish is not None:
                self.finishes[delta.rid] = delta

    def turn(self) -> bool:
        return self._aio.run_until_complete(self.loop.turn())

    def run_until(self, condition: Callable[[], bool], max_turns: int = 10_000) -> None:
        for _ in range(max_turns):
            if condition():
                return
            self.turn()
        raise AssertionError("the condition never held")

    def run_idle(self) -> None:
        """Turns until nothing is left to plan or publish."""
        while self.turn():
            pass
        self._aio.run_until_complete(self.loop.flush())

    def close(self) -> None:
        self._aio.close()
