"""The scheduler's recovery without gRPC: the step loop and LinkSupervisor over in-process
NullWorkers whose streams the test breaks, and a detokenizer stand-in that collects batches."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.loop import WorkerLostError
from radixmesh.services.scheduler.supervisor import LinkSupervisor, PeerNotReadyError
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.shared.mesh_protocol import HandshakeError, Hello, unavailable_reason
from radixmesh.shared.requests import FinishKind, TokenDelta, TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo
from radixmesh.shared.token_batch import TokenBatch

pytestmark = pytest.mark.timeout(60)
INFO = WorkerInfo(model_id="m", num_pages=4096, page_size=1, context_len=4096, vocab_size=512,
                  eos_token_ids=(2,), kv_dtype="none", max_running_requests=2, worker="null")


class FakeStream:
    """An Execute stream to an in-process NullWorker; `lose()` breaks it as a dead worker's."""

    def __init__(self, worker: NullWorker) -> None:
        self.worker = worker
        self.results: asyncio.Queue[StepResult | None] = asyncio.Queue()
        self._ended = asyncio.Event()

    async def send(self, plan: StepPlan) -> None:
        if self._ended.is_set():
            raise WorkerLostError("the stream is closed")
        self.results.put_nowait(self.worker.execute(plan))

    async def receive(self) -> StepResult:
        result = await self.results.get()
        if result is None:
            raise WorkerLostError("the fake worker died")
        await asyncio.sleep(0.002)  # a step takes time: requests stay in flight a while
        return result

    async def ended(self) -> str:
        await self._ended.wait()
        return "the fake stream ended"

    def lose(self) -> None:
        self.results.put_nowait(None)

    def close(self) -> None:
        self._ended.set()


@dataclasses.dataclass
class FakeSession:
    hello: Hello
    info: WorkerInfo
    stream: FakeStream


class FakeWorkers:
    """Hands out a session per connect: refusals and absences first, as queued."""

    address = "fake-worker"

    def __init__(self) -> None:
        self.failures: list[Exception] = []
        self.streams: list[FakeStream] = []
        self.info = INFO

    async def connect(self, expected_model: str | None) -> FakeSession:
        if self.failures:
            raise self.failures.pop(0)
        stream = FakeStream(NullWorker(self.info))
        self.streams.append(stream)
        return FakeSession(Hello("worker", "null", self.info.model_id), self.info, stream)


class FakeDetokenizer:
    address = "fake-detokenizer"

    def __init__(self) -> None:
        self.deltas: dict[str, list[TokenDelta]] = {}
        self._ended = asyncio.Event()

    async def connect(self) -> Hello:
        self._ended.clear()
        return Hello("detokenizer")

    async def ended(self) -> str:
        await self._ended.wait()
        return "the fake detokenizer died"

    async def publish(self, batch: TokenBatch) -> None:
        for delta in batch.deltas:
            self.deltas.setdefault(delta.rid, []).append(delta)

    def finish(self, rid: str) -> TokenDelta | None:
        return next((d for d in self.deltas.get(rid, []) if d.finish is not None), None)

    def close(self) -> None:
        pass


def request(rid: str, max_new_tokens: int) -> TokenizedRequest:
    return TokenizedRequest(rid, (5, 6, 7), SamplingParams(max_new_tokens=max_new_tokens))


async def until(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def test_a_lost_worker_fails_running_requests_keeps_queued_ones_and_a_new_one_serves_them():
    async def scenario() -> None:
        workers, detokenizer = FakeWorkers(), FakeDetokenizer()
        supervisor = LinkSupervisor(SchedulerConfig(max_running_requests=2), workers,
                                    detokenizer)
        states: list[bool] = []

        async def set_serving(serving: bool) -> None:
            states.append(serving)
        supervisor.set_serving = set_serving
        loop = await supervisor.start()
        runner = asyncio.create_task(supervisor.run())
        loop.submit([request("a", 3000), request("b", 3000), request("c", 5), request("d", 5)])
        await until(lambda: {"a", "b"} <= set(detokenizer.deltas))
        # Refused, then absent, then back: the supervisor retries through both.
        workers.failures = [HandshakeError("wrong model"), PeerNotReadyError("not yet")]
        workers.streams[-1].lose()
        await until(lambda: detokenizer.finish("a") and detokenizer.finish("b"))
        for rid in "ab":
            assert unavailable_reason(detokenizer.finish(rid).finish) == "the fake worker died"
        await until(lambda: detokenizer.finish("c") and detokenizer.finish("d"))
        for rid in "cd":  # queued across the loss, served by the new worker in full
            assert detokenizer.finish(rid).finish.kind is FinishKind.LENGTH
            assert sum(len(d.token_ids) for d in detokenizer.deltas[rid]) == 5
        assert states == [True, False, True] and len(workers.streams) == 2
        await until(lambda: not loop.scheduler.has_work)
        loop.scheduler.check_integrity()
        runner.cancel()

    asyncio.run(scenario())


def test_while_no_worker_new_requests_fail_at_once_and_queued_ones_after_the_bound():
    async def scenario() -> None:
        workers, detokenizer = FakeWorkers(), FakeDetokenizer()
        config = SchedulerConfig(max_running_requests=1, worker_lost_timeout=0.2)
        supervisor = LinkSupervisor(config, workers, detokenizer)
        loop = await supervisor.start()
        runner = asyncio.create_task(supervisor.run())
        loop.submit([request("a", 3000), request("queued", 5)])
        await until(lambda: "a" in detokenizer.deltas)
        workers.failures = [PeerNotReadyError("gone")] * 1000  # it does not come back
        workers.streams[-1].close()  # the stream ends while the loop may idle: seen anyway
        await until(lambda: not supervisor.serving)
        loop.submit([request("late", 5)])
        await until(lambda: detokenizer.finish("late") is not None)
        assert unavailable_reason(detokenizer.finish("late").finish) is not None
        await until(lambda: detokenizer.finish("queued") is not None)
        assert "no worker came back within 0.2s" in detokenizer.finish("queued").finish.message
        loop.scheduler.check_integrity()
        runner.cancel()

    asyncio.run(scenario())


def test_a_lost_detokenizer_ends_every_request_and_serving_resumes_when_it_is_back():
    async def scenario() -> None:
        workers, detokenizer = FakeWorkers(), FakeDetokenizer()
        supervisor = LinkSupervisor(SchedulerConfig(max_running_requests=1), workers,
                                    detokenizer)
        loop = await supervisor.start()
        runner = asyncio.create_task(supervisor.run())
        loop.submit([request("a", 3000), request("b", 3000)])
        await until(lambda: "a" in detokenizer.deltas)
        detokenizer._ended.set()
        await until(lambda: not loop.scheduler.running and not loop.scheduler.waiting)
        await until(lambda: supervisor.serving)  # connect() clears the fake's end at once
        loop.submit([request("c", 4)])
        await until(lambda: detokenizer.finish("c") is not None)
        assert detokenizer.finish("c").finish.kind is FinishKind.LENGTH
        await until(lambda: not loop.scheduler.has_work)
        loop.scheduler.check_integrity()
        runner.cancel()

    asyncio.run(scenario())
