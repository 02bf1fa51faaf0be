"""The scheduler's pipelined step loop against an in-process NullWorker: no gRPC."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.loop import SchedulerLoop
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.shared.requests import FinishKind, TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo
from radixmesh.shared.token_batch import TokenBatch

INFO = WorkerInfo(model_id="null", num_pages=2048, page_size=1, context_len=4096,
                  vocab_size=512, eos_token_ids=(2,), kv_dtype="none", max_running_requests=64)


class InProcessWorker:
    """The worker end of the loop's callables: executes plans in order on a thread, so the
    loop can plan ahead while a step runs, exactly as over the Execute stream."""

    def __init__(self, worker: NullWorker) -> None:
        self.worker = worker
        self._plans: asyncio.Queue[StepPlan] = asyncio.Queue()
        self._results: asyncio.Queue[StepResult] = asyncio.Queue()

    async def send(self, plan: StepPlan) -> None:
        await self._plans.put(plan)

    async def receive(self) -> StepResult:
        return await self._results.get()

    async def run(self) -> None:
        while True:
            plan = await self._plans.get()
            await self._results.put(await asyncio.to_thread(self.worker.execute, plan))


class Recorder:
    """Collects published batches and checks each registration precedes its rid's deltas."""

    def __init__(self) -> None:
        self.registered: dict[str, int] = {}  # rid -> num_prompt_tokens
        self.outputs: dict[str, list[int]] = {}
        self.finishes: dict = {}
        self.usages: dict = {}
        self.cached: dict[str, int] = {}
        self.num_batches = 0

    async def publish(self, batch: TokenBatch) -> None:
        self.num_batches += 1
        for reg in batch.registrations:
            self.registered[reg.rid] = reg.num_prompt_tokens
        for delta in batch.deltas:
            assert delta.rid in self.registered, "a delta came before its registration"
            assert delta.rid not in self.finishes, "a delta came after its finish"
            self.outputs.setdefault(delta.rid, []).extend(delta.token_ids)
            if delta.rid in batch.num_cached_tokens:
                self.cached[delta.rid] = batch.num_cached_tokens[delta.rid]
            if delta.finish is not None:
                self.finishes[delta.rid] = delta.finish
                self.usages[delta.rid] = delta.usage


class Harness:
    """A SchedulerLoop and its in-process NullWorker, each running as a task."""

    def __init__(self, info: WorkerInfo = INFO, max_inflight: int = 2, **config) -> None:
        self.worker = NullWorker(info, check_pages=True)  # fails a step writing a read page
        self.recorder = Recorder()
        self.scheduler = Scheduler(SchedulerConfig(**config), info)
        link = InProcessWorker(self.worker)
        self.loop = SchedulerLoop(self.scheduler, link.send, link.receive,
                                  self.recorder.publish, max_inflight)
        self.tasks = [asyncio.create_task(link.run()), asyncio.create_task(self.loop.run())]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        """Polls `condition`; re-raises at once whatever ended the loop or the worker."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            for task in self.tasks:
                if task.done():
                    task.result()
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.005)

    async def finish(self) -> None:
        """Waits until idle, checks nothing leaked, and stops the tasks."""
        try:
            await self.wait_until(lambda: not self.scheduler.has_work
                                  and self.loop.num_inflight == 0)
            self.scheduler.check_integrity()
            assert self.worker.num_requests == 0
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)


async def run_loop(body: Callable[[Harness], object], **kwargs) -> None:
    harness = Harness(**kwargs)
    try:
        await body(harness)
    finally:
        await harness.finish()


def request(rid: str, prompt_len: int, max_new_tokens: int, **sampling) -> TokenizedRequest:
    prompt = tuple(random.Random(rid).randrange(10, 500) for _ in range(prompt_len))
    return TokenizedRequest(rid, prompt, SamplingParams(max_new_tokens=max_new_tokens,
                                                        **sampling))


def test_200_requests_complete_with_exact_token_counts_and_pipelined_steps():
    rng = random.Random(0)
    lengths = {f"r{i}": (rng.randint(1, 40), rng.randint(1, 24)) for i in range(200)}

    async def body(h: Harness) -> None:
        loop, recorder, worker = h.loop, h.recorder, h.worker
        items = list(lengths.items())
        for start in range(0, len(items), 50):  # in four bursts, some while others decode
            loop.submit([request(rid, p, n) for rid, (p, n) in items[start:start + 50]])
            await asyncio.sleep(0.01)
        await h.wait_until(lambda: len(recorder.finishes) == len(lengths))
        for rid, (prompt_len, max_new) in lengths.items():
            assert recorder.outputs[rid] == [worker.token_at(n) for n in range(max_new)]
            assert recorder.finishes[rid].kind is FinishKind.LENGTH
            assert recorder.usages[rid].completion_tokens == max_new
            assert recorder.usages[rid].prompt_tokens == prompt_len
            assert recorder.cached[rid] == recorder.usages[rid].cached_tokens
        assert loop.stats.max_inflight == 2
        assert loop.stats.num_pipelined_steps > loop.stats.num_steps // 2
        assert recorder.num_batches < loop.stats.num_steps + 10  # one batch per step

    asyncio.run(run_loop(body))


def test_without_pipelining_one_plan_is_ever_in_flight():
    async def body(h: Harness) -> None:
        loop, recorder = h.loop, h.recorder
        loop.submit([request(f"r{i}", 8, 5) for i in range(10)])
        await h.wait_until(lambda: len(recorder.finishes) == 10)
        assert loop.stats.max_inflight == 1 and loop.stats.num_pipelined_steps == 0

    asyncio.run(run_loop(body, max_inflight=1))


def test_a_request_the_scheduler_refuses_finishes_with_an_abort_and_others_go_on():
    async def body(h: Harness) -> None:
        loop, recorder = h.loop, h.recorder
        too_long = request("huge", 100, INFO.num_pages)  # cannot fit the KV pool
        out_of_vocab = TokenizedRequest("oov", (1, INFO.vocab_size), SamplingParams())
        bad_top_p = TokenizedRequest("top_p", (1, 2), SamplingParams(top_p=7.0))
        empty = TokenizedRequest("empty", (), SamplingParams())
        loop.submit([request("ok", 4, 3), too_long, out_of_vocab, bad_top_p, empty])
        loop.reject("undecodable", list(range(20, 27)), "sampling: top_p must be in (0, 1]")
        await h.wait_until(lambda: len(recorder.finishes) == 6)
        for rid, field in [("oov", "input_ids"), ("top_p", "top_p"), ("empty", "prompt")]:
            assert recorder.finishes[rid].kind is FinishKind.ABORT
            assert recorder.finishes[rid].message.startswith(field)
        assert recorder.finishes["huge"].kind is FinishKind.ABORT
        assert "max_new_tokens" in recorder.finishes["huge"].message
        assert recorder.usages["huge"].prompt_tokens == 100
        assert recorder.outputs["huge"] == []
        assert "top_p" in recorder.finishes["undecodable"].message
        assert recorder.registered["undecodable"] == 7
        assert recorder.finishes["ok"].kind is FinishKind.LENGTH
        assert len(recorder.outputs["ok"]) == 3
        # Refusals carry the status the front door answers with (issue 18).
        assert {recorder.finishes[rid].status_code for rid in (
            "huge", "oov", "top_p", "empty", "undecodable")} == {400}
        assert recorder.finishes["ok"].status_code is None

    asyncio.run(run_loop(body))


def test_aborts_free_running_and_waiting_requests_at_once():
    async def body(h: Harness) -> None:
        loop, recorder = h.loop, h.recorder
        owner = object()
        loop.submit([request(f"r{i}", 16, 2000) for i in range(4)], owner=owner)
        loop.submit([request("other", 4, 5)])
        await h.wait_until(lambda: all(len(recorder.outputs.get(f"r{i}", [])) >= 3
                                     for i in range(4)))
        loop.submit([], aborts=["r0", "unknown"])
        loop.abort_owned_by(owner)  # its stream closed: r1..r3 go too, "other" stays
        await h.wait_until(lambda: len(recorder.finishes) == 5)
        for i in range(4):
            assert recorder.finishes[f"r{i}"].kind is FinishKind.ABORT
        assert recorder.finishes["other"].kind is FinishKind.LENGTH
        assert not loop.scheduler.running

    asyncio.run(run_loop(body))


@pytest.mark.parametrize("max_inflight", [0, -1])
def test_max_inflight_must_be_positive(max_inflight: int):
    scheduler = Scheduler(SchedulerConfig(), INFO)

    async def never() -> None: ...

    with pytest.raises(ValueError):
        SchedulerLoop(scheduler, never, never, never, max_inflight)


def test_a_small_pool_retracts_under_pipelining_and_every_request_still_completes():
    small = WorkerInfo(model_id="null", num_pages=300, page_size=1, context_len=4096,
                       vocab_size=512, eos_token_ids=(2,), kv_dtype="none",
                       max_running_requests=64)
    rng = random.Random(1)
    lengths = {f"r{i}": (rng.randint(10, 30), rng.randint(20, 60)) for i in range(40)}

    async def body(h: Harness) -> None:
        h.loop.submit([request(rid, p, n) for rid, (p, n) in lengths.items()])
        await h.wait_until(lambda: len(h.recorder.finishes) == len(lengths))
        assert h.scheduler.stats.num_retractions > 0
        for rid, (_, max_new) in lengths.items():
            assert h.recorder.outputs[rid] == [h.worker.token_at(n) for n in range(max_new)]

    asyncio.run(run_loop(body, info=small, chunked_prefill_size=64))
