"""A W3C trace context set at the front door reaches the scheduler, the worker and the
detokenizer unchanged, through real gRPC servers on loopback (design §6, issue 11).

The four services run their real `serve` entry points in this process, so the objects that
receive each message can be watched: spies record what the scheduler's core, the worker and
the detokenizer's core were handed, then call through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from radixmesh.services.detokenizer import server as detokenizer_server
from radixmesh.services.detokenizer.batch_detokenizer import BatchDetokenizer
from radixmesh.services.detokenizer.config import DetokenizerConfig
from radixmesh.services.scheduler import server as scheduler_server
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.tokenizer.server import TokenizerServer
from radixmesh.services.worker import server as worker_server
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.shared.grpc_service import wait_until_serving
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, generate_pb2_grpc
from radixmesh.shared.trace_context import NO_TRACE, TraceContext
from tests.mesh.conftest import free_port
from tests.mesh.front_door_harness import READY_TIMEOUT_S, tiny_model_dir

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STATE = "vendor=opaque,other=1"


@dataclass
class Seen:
    """Trace contexts by rid, as each service's core received them."""

    scheduler: dict[str, TraceContext] = field(default_factory=dict)
    worker: dict[str, TraceContext] = field(default_factory=dict)
    detokenizer: dict[str, TraceContext] = field(default_factory=dict)


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Seen:
    seen = Seen()
    add_request, execute, round_ = Scheduler.add_request, NullWorker.execute, BatchDetokenizer.round

    def spy_add_request(self, request):
        seen.scheduler[request.rid] = request.trace
        return add_request(self, request)

    def spy_execute(self, plan):
        seen.worker.update((new.rid, new.trace) for new in plan.new_requests)
        return execute(self, plan)

    def spy_round(self, batch):
        seen.detokenizer.update((reg.rid, reg.trace) for reg in batch.registrations)
        return round_(self, batch)

    monkeypatch.setattr(Scheduler, "add_request", spy_add_request)
    monkeypatch.setattr(NullWorker, "execute", spy_execute)
    monkeypatch.setattr(BatchDetokenizer, "round", spy_round)
    return seen


@contextlib.asynccontextmanager
async def running_mesh() -> AsyncIterator[str]:
    """Worker, detokenizer, scheduler and front door in this event loop; yields the public
    gRPC address."""
    model = str(tiny_model_dir())
    worker, detok, sched = (f"127.0.0.1:{free_port()}" for _ in range(3))
    tasks = [asyncio.create_task(worker_server.serve(
        WorkerConfig(model_path=model, port=int(worker.split(":")[1]), worker="null"))),
        asyncio.create_task(detokenizer_server.serve(
            DetokenizerConfig(model_path=model, port=int(detok.split(":")[1]))))]
    tasks.append(asyncio.create_task(scheduler_server.serve(
        SchedulerConfig(port=int(sched.split(":")[1]), worker_address=worker,
                        detokenizer_address=detok))))
    front = TokenizerServer(TokenizerConfig(
        model_path=model, port=free_port(), grpc_port=free_port(), scheduler_address=sched,
        detokenizer_address=detok))
    try:
        async with grpc.aio.insecure_channel(sched) as channel:
            await wait_until_serving(channel, READY_TIMEOUT_S)
        await front.start()
        await asyncio.wait_for(front.wait_ready(), READY_TIMEOUT_S)
        yield f"127.0.0.1:{front.config.grpc_port}"
    finally:
        await front.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def generate(stub: generate_pb2_grpc.GenerationStub, rid: str,
                   metadata: tuple[tuple[str, str], ...] = (),
                   trace: common_pb2.TraceContext | None = None) -> list[int]:
    request = generate_pb2.GenerateRequest(
        rid=rid, input_ids=generate_pb2.TokenIds(ids=[5, 6, 7]),
        sampling=common_pb2.SamplingParams(max_new_tokens=3), trace=trace)
    return [token async for reply in stub.Generate(request, metadata=metadata)
            for token in reply.token_ids]


def test_a_context_from_the_front_door_reaches_every_service_unchanged(seen: Seen) -> None:
    async def scenario() -> None:
        async with running_mesh() as address, grpc.aio.insecure_channel(address) as channel:
            stub = generate_pb2_grpc.GenerationStub(channel)
            outputs = [
                await generate(stub, "in-metadata",
                               metadata=(("traceparent", PARENT), ("tracestate", STATE))),
                await generate(stub, "in-message",
                               trace=common_pb2.TraceContext(traceparent=PARENT,
                                                             tracestate=STATE)),
                await generate(stub, "untraced"),
                await generate(stub, "malformed", metadata=(("traceparent", "00-zz-01"),))]
            assert [len(output) for output in outputs] == [3, 3, 3, 3]

    asyncio.run(scenario())
    expected = TraceContext(PARENT, STATE)
    for where in (seen.scheduler, seen.worker, seen.detokenizer):
        assert where["in-metadata"] == where["in-message"] == expected
        # Tracing off or a context dropped: the field travels, empty.
        assert where["untraced"] == where["malformed"] == NO_TRACE


def test_a_malformed_traceparent_is_dropped_at_the_front_door() -> None:
    assert TraceContext.parse("00-zz-00f067aa0ba902b7-01", STATE) == NO_TRACE
    assert TraceContext.parse("00-" + "0" * 32 + "-00f067aa0ba902b7-01") == NO_TRACE
    assert TraceContext.parse(PARENT, "bad\u00e9state") == TraceContext(PARENT, "")
    assert not NO_TRACE and TraceContext(PARENT)
