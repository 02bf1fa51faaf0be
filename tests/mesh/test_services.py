"""The worker, scheduler and detokenizer services as real processes, driven over gRPC."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import grpc
import pytest

from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.model_runner import ModelRunner
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.services.worker.worker_registry import null_worker_info
from radixmesh.shared import wire
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import ExtendChunk, NewRequest, PageTableWrite, StepPlan
from radixmesh.shared.tokenizer import TextTokenizer

from .conftest import ServiceStarter, free_port, wait_serving

WORKER_FLAGS = ("--device", "cpu", "--max-total-tokens", "256", "--max-running-requests", "8")


def hand_made_plans() -> list[StepPlan]:
    """Two requests, one greedy and one seeded: a chunked prefill, a second request joining
    mid-prefill, two pipelined decodes (inputs resolved on the worker), then the releases."""
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    seeded = SamplingParams(max_new_tokens=10, temperature=1.0, seed=123)
    a = NewRequest("a", (11, 12, 13, 14, 15, 16), 6, 0, (), greedy)
    b = NewRequest("b", (21, 22, 23), 3, 0, (), seeded)
    return [
        StepPlan(1, new_requests=[a], page_writes=[PageTableWrite("a", 0, (1, 2, 3, 4))],
                 extends=[ExtendChunk("a", 0, 4, False)]),
        StepPlan(2, new_requests=[b],
                 page_writes=[PageTableWrite("a", 4, (5, 6)), PageTableWrite("b", 0, (7, 8, 9))],
                 extends=[ExtendChunk("a", 4, 2, True), ExtendChunk("b", 0, 3, True)]),
        StepPlan(3, page_writes=[PageTableWrite("a", 6, (10,)), PageTableWrite("b", 3, (11,))],
                 decodes=["a", "b"]),
        StepPlan(4, page_writes=[PageTableWrite("a", 7, (12,)), PageTableWrite("b", 4, (13,))],
                 decodes=["a", "b"]),
        StepPlan(5, released=["a", "b"]),
    ]


async def execute_all(address: str, plans: list[StepPlan]) -> list[internal_pb2.StepResult]:
    """Sends every plan before reading any result: the most pipelined a scheduler can be."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = internal_pb2_grpc.WorkerStub(channel).Execute()
        for plan in plans:
            await call.write(wire.plan_to_proto(plan))
        results = [await call.read() for _ in plans]
        await call.done_writing()
        return results


async def leave_stream_with_a_registered_request(address: str, plan: StepPlan) -> None:
    """Opens a stream, registers a request, checks a second stream is refused, then hangs up."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = internal_pb2_grpc.WorkerStub(channel)
        first = stub.Execute()
        await first.write(wire.plan_to_proto(plan))
        assert (await first.read()).step_id == plan.step_id
        second = stub.Execute()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await second.read()
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        first.cancel()


def test_worker_execute_stream_matches_the_in_process_model_runner(
        services: ServiceStarter, mesh_model_path: Path):
    worker = services.start("worker", "--worker", "model", "--model-path", str(mesh_model_path),
                            *WORKER_FLAGS)
    runner = ModelRunner(WorkerConfig(model_path=str(mesh_model_path), device="cpu",
                                      max_total_tokens=256, max_running_requests=8),
                         mesh_model_path)
    plans = hand_made_plans()
    expected = [runner.execute(plan) for plan in plans]
    assert [len(result.rids) for result in expected] == [0, 2, 2, 2, 0]

    with grpc.insecure_channel(worker.address) as channel:
        info = internal_pb2_grpc.WorkerStub(channel).GetInfo(common_pb2.Empty())
    assert wire.worker_info_from_proto(info) == runner.info()
    assert info.worker == "model"

    # A stream that ends with requests still registered leaves the worker clean for the next.
    asyncio.run(leave_stream_with_a_registered_request(worker.address, plans[0]))
    for _ in range(2):  # twice: a finished stream leaves nothing behind either
        results = asyncio.run(execute_all(worker.address, plans))
        assert [wire.result_from_proto(r) for r in results] == expected
        assert all(r.forward_seconds > 0 for r in results)
        assert all(r.idle_seconds >= 0 for r in results)


# ---- scheduler + detokenizer + null worker -------------------------------------------------


class MeshClient:
    """The tokenizer's side of the internal streams: Submit batches, Subscribe to text."""

    def __init__(self, scheduler: str, detokenizer: str) -> None:
        self._channels = [grpc.aio.insecure_channel(scheduler),
                          grpc.aio.insecure_channel(detokenizer)]
        self.scheduler = internal_pb2_grpc.SchedulerStub(self._channels[0])
        self._detokenizer = internal_pb2_grpc.DetokenizerStub(self._channels[1])
        self.text: dict[str, str] = {}
        self.tokens: dict[str, list[int]] = {}
        self.finishes: dict[str, internal_pb2.TextDelta] = {}
        self._changed = asyncio.Event()
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> MeshClient:
        subscription = self._detokenizer.Subscribe(common_pb2.Empty())
        await subscription.initial_metadata()  # subscribed: no batch is missed from here on
        self._reader = asyncio.create_task(self._read(subscription))
        return self

    async def __aexit__(self, *exc) -> None:
        self._reader.cancel()
        for channel in self._channels:
            await channel.close()

    async def _read(self, subscription) -> None:
        async for batch in subscription:
            for delta in map(wire.text_delta_to_proto, wire.text_batch_from_proto(batch)):
                self.text[delta.rid] = self.text.get(delta.rid, "") + delta.text
                self.tokens.setdefault(delta.rid, []).extend(delta.token_ids)
                if delta.HasField("finish"):
                    assert delta.rid not in self.finishes, "two finishes for one request"
                    self.finishes[delta.rid] = delta
            self._changed.set()

    async def wait_for(self, condition, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def wait_idle(self, timeout: float = 10.0) -> internal_pb2.SchedulerLoad:
        async with asyncio.timeout(timeout):
            while True:
                load = await self.scheduler.GetLoad(common_pb2.Empty())
                if load.num_running_reqs == 0 and load.num_queue_reqs == 0:
                    return load
                await asyncio.sleep(0.05)


def batch(*requests: TokenizedRequest, aborts=()) -> internal_pb2.RequestBatch:
    return internal_pb2.RequestBatch(
        requests=[wire.tokenized_request_to_proto(r) for r in requests], aborts=list(aborts))


def prompt(i: int) -> tuple[int, ...]:
    return tuple(30 + (i * 7 + j) % 200 for j in range(3 + i % 9))


@pytest.fixture(scope="module")
def null_services(module_services: ServiceStarter, mesh_model_path: Path) -> dict[str, str]:
    model = ("--model-path", str(mesh_model_path))
    metrics_port = free_port()
    worker = module_services.spawn("worker", "--worker", "null", "--metrics-port",
                                   str(metrics_port), *model)
    detokenizer = module_services.spawn("detokenizer", *model)
    scheduler = module_services.spawn("scheduler", "--worker-address", worker.address,
                                      "--detokenizer-address", detokenizer.address)
    for started in module_services.started:
        wait_serving(started.address, started.process, started.name)
    return {"worker": worker.address, "detokenizer": detokenizer.address,
            "scheduler": scheduler.address, "metrics": f"http://127.0.0.1:{metrics_port}"}


def test_scheduler_streams_requests_through_the_detokenizer(
        null_services: dict[str, str], mesh_model_path: Path):
    tokenizer = TextTokenizer.from_pretrained(mesh_model_path)
    null = NullWorker(null_worker_info(WorkerConfig(model_path=str(mesh_model_path))))
    lengths = {f"r{i}": 1 + i % 30 for i in range(60)}
    full_stop_text = tokenizer.decode([null.token_at(n) for n in range(20)])
    stop = full_stop_text[8:10]

    async def scenario() -> None:
        async with MeshClient(null_services["scheduler"], null_services["detokenizer"]) as mesh:
            info = await mesh.scheduler.GetInfo(common_pb2.Empty())
            assert info.worker == "null" and info.vocab_size == tokenizer.vocab_size
            submit = mesh.scheduler.Submit()
            bad = wire.tokenized_request_to_proto(TokenizedRequest("bad", (5, 6), SamplingParams()))
            bad.sampling.top_p = 7.0
            requests = [TokenizedRequest(rid, prompt(i), SamplingParams(max_new_tokens=n))
                        for i, (rid, n) in enumerate(lengths.items())]
            await submit.write(batch(*requests[:30]))
            await submit.write(internal_pb2.RequestBatch(requests=[bad]))
            await submit.write(batch(*requests[30:], TokenizedRequest(
                "stop", (40, 41), SamplingParams(max_new_tokens=20, stop=(stop,)))))
            await mesh.wait_for(lambda: len(mesh.finishes) == len(lengths) + 2)
            await submit.write(batch(aborts=["stop"]))  # as the tokenizer does on a stop string
            load = await mesh.wait_idle()
            await submit.done_writing()

        for i, (rid, n) in enumerate(lengths.items()):
            expected_ids = [null.token_at(k) for k in range(n)]
            assert mesh.tokens[rid] == expected_ids
            assert mesh.text[rid] == tokenizer.decode(expected_ids)
            finish = mesh.finishes[rid]
            assert finish.finish.type == "length"
            assert (finish.usage.prompt_tokens, finish.usage.completion_tokens) == \
                (len(prompt(i)), n)
        assert mesh.finishes["bad"].finish.type == "abort"
        assert "top_p" in mesh.finishes["bad"].finish.message
        stopped = mesh.finishes["stop"]
        assert stopped.finish.type == "stop" and stopped.finish.matched_text == stop
        assert full_stop_text.startswith(mesh.text["stop"]) and stop not in mesh.text["stop"]
        assert stopped.usage.prompt_tokens == 2
        assert 0 < stopped.usage.completion_tokens == len(mesh.tokens["stop"]) < 20
        assert load.num_generated_tokens >= sum(lengths.values())

    asyncio.run(scenario())
    metrics = urllib.request.urlopen(null_services["metrics"] + "/metrics").read().decode()
    # Labelled with the served model's default name: the model directory's.
    label = f'{{model_name="{mesh_model_path.resolve().name}"}}'
    idle_steps = re.search(rf"^radixmesh:worker_idle_seconds_count{re.escape(label)} (\S+)$",
                           metrics, re.M)
    assert idle_steps is not None and float(idle_steps.group(1)) > 0


def test_aborts_and_a_closed_submit_stream_free_requests_at_once(null_services: dict[str, str]):
    long = SamplingParams(max_new_tokens=1500)

    async def scenario() -> None:
        async with MeshClient(null_services["scheduler"], null_services["detokenizer"]) as mesh:
            submit = mesh.scheduler.Submit()
            orphan_stream = mesh.scheduler.Submit()
            await submit.write(batch(TokenizedRequest("cancelled", (50, 51, 52), long)))
            await orphan_stream.write(batch(TokenizedRequest("orphan", (60, 61), long)))
            await mesh.wait_for(lambda: "cancelled" in mesh.tokens and "orphan" in mesh.tokens)
            await submit.write(batch(aborts=["cancelled", "never-submitted"]))
            await orphan_stream.done_writing()  # the tokenizer went away: its requests end
            await mesh.wait_for(lambda: {"cancelled", "orphan"} <= set(mesh.finishes))
            load = await mesh.wait_idle()
            await submit.done_writing()
        for rid in ("cancelled", "orphan"):
            assert mesh.finishes[rid].finish.type == "abort"
            assert len(mesh.tokens[rid]) < 1500
        assert load.num_running_reqs == 0 and load.token_usage == 0.0

    asyncio.run(scenario())
