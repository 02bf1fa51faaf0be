"""The front door's Router against real gRPC Scheduler/Detokenizer services (MiniMesh).

MiniMesh runs the real Scheduler, NullWorker and Detokenizer; the router reaches it through
its real gRPC link. NullWorker output n is token 7 + n, which decodes to "#$%&'()*+,-./0123...".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from radixmesh.services.detokenizer.detokenizer import Detokenizer
from radixmesh.services.tokenizer.mesh_link import GrpcMeshLink
from radixmesh.services.tokenizer.router import Router
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.shared.errors import InvalidRequestError, UnavailableError
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.requests import FinishKind
from radixmesh.shared.trace_context import TraceContext
from tests.mesh.conftest import free_port
from tests.mesh.front_door_harness import null_worker, tiny_tokenizer
from tests.mesh.mini_mesh import MiniMesh

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def connected_router(worker: NullWorker | None = None, port: int = 0,
                           metrics: FrontDoorMetrics | None = None,
                           ) -> AsyncIterator[tuple[Router, MiniMesh]]:
    mesh = MiniMesh(worker or null_worker(), Detokenizer(tiny_tokenizer()))
    address = await mesh.start(port)
    link = GrpcMeshLink(address, address)
    router = Router(link, tiny_tokenizer(), metrics, retry_delay=0.05)
    task = asyncio.create_task(router.run())
    try:
        await asyncio.wait_for(router.wait_ready(), 10)
        yield router, mesh
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await link.close()
        await mesh.stop()


async def wait_idle(mesh: MiniMesh, timeout: float = 5.0) -> None:
    """Until the scheduler holds no request, then checks that no page leaked."""
    async with asyncio.timeout(timeout):
        while mesh.scheduler.has_work:
            await asyncio.sleep(0.01)
    mesh.scheduler.check_integrity()


def null_tokens(worker: NullWorker, count: int) -> list[int]:
    return [worker.token_at(position) for position in range(count)]


def test_requests_of_one_tick_leave_in_one_batch_and_all_complete() -> None:
    async def body() -> None:
        worker = null_worker()
        async with connected_router(worker) as (router, mesh):
            streams = [router.submit(router.build(f"r{i}", {"text": f"hello {i}",
                                                            "max_new_tokens": 5 + i}))
                       for i in range(30)]
            results = await asyncio.gather(*(stream.collect() for stream in streams))
            assert len(mesh.batches_received) == 1
            assert [r.rid for r in mesh.batches_received[0].requests] == \
                [f"r{i}" for i in range(30)]
            for i, done in enumerate(results):
                assert done.token_ids == null_tokens(worker, 5 + i)
                assert done.text == tiny_tokenizer().decode(done.token_ids)
                assert done.finish.kind is FinishKind.LENGTH
                assert done.usage.completion_tokens == 5 + i
            assert router.num_live == 0
            await wait_idle(mesh)

    asyncio.run(body())


def test_abort_ends_the_stream_and_frees_the_pages_at_once() -> None:
    async def body() -> None:
        async with connected_router() as (router, mesh):
            stream = router.submit(router.build("long", {"text": "hi", "max_new_tokens": 1500}))
            first = await anext(stream)
            assert first.token_ids and first.finish is None
            assert router.abort("long")
            rest = [delta async for delta in stream]
            assert rest[-1].finish.kind is FinishKind.ABORT
            assert rest[-1].usage.prompt_tokens == stream.num_prompt_tokens
            await wait_idle(mesh)
            assert (await router.get_load()).num_running_reqs == 0
            assert not router.abort("long")  # no longer live

    asyncio.run(body())


def test_leaving_a_stream_early_aborts_the_request() -> None:
    async def body() -> None:
        async with connected_router() as (router, mesh):
            async with router.submit(router.build(None, {"text": "hi",
                                                         "max_new_tokens": 1500})) as stream:
                async for _ in stream:
                    break
            assert router.num_live == 0
            await wait_idle(mesh)
            aborts = [rid for batch in mesh.batches_received for rid in batch.aborts]
            assert aborts == [stream.rid]

    asyncio.run(body())


def test_abort_before_sending_never_reaches_the_scheduler() -> None:
    async def body() -> None:
        async with connected_router() as (router, mesh):
            stream = router.submit(router.build("gone", {"text": "hi"}))
            router.abort("gone")
            gone = await stream.collect()
            assert gone.token_ids == [] and gone.finish.kind is FinishKind.ABORT
            done = await router.submit(router.build("kept", {"text": "hi",
                                                             "max_new_tokens": 2})).collect()
            assert len(done.token_ids) == 2
            sent = [r.rid for batch in mesh.batches_received for r in batch.requests]
            assert sent == ["kept"]
            assert all(not batch.aborts for batch in mesh.batches_received)

    asyncio.run(body())


def test_stop_string_finishes_the_stream_and_aborts_at_the_scheduler() -> None:
    async def body() -> None:
        async with connected_router() as (router, mesh):
            stream = router.submit(router.build("s", {"text": "hi", "max_new_tokens": 1500,
                                                      "stop": ["012"]}))
            done = await stream.collect()
            assert done.text == "#$%&'()*+,-./"
            assert done.finish.kind is FinishKind.STOP and done.finish.matched == "012"
            assert done.usage.completion_tokens == len(done.token_ids) < 1500
            await wait_idle(mesh)  # freed long before 1500 tokens
            assert [rid for batch in mesh.batches_received for rid in batch.aborts] == ["s"]

    asyncio.run(body())


def test_deltas_that_piled_up_are_read_as_one() -> None:
    async def body() -> None:
        worker = null_worker()
        async with connected_router(worker) as (router, _):
            stream = router.submit(router.build("slow", {"text": "hi", "max_new_tokens": 6}))
            async with asyncio.timeout(5):
                while router.num_live:  # a reader that falls behind by the whole request
                    await asyncio.sleep(0.01)
            deltas = [delta async for delta in stream]
            assert len(deltas) == 1
            assert deltas[0].token_ids == null_tokens(worker, 6)
            assert deltas[0].text == "#$%&'(" and deltas[0].finish.kind is FinishKind.LENGTH

    asyncio.run(body())


def test_a_live_request_id_cannot_be_reused_until_it_finishes() -> None:
    async def body() -> None:
        async with connected_router() as (router, _):
            stream = router.submit(router.build("same", {"text": "hi", "max_new_tokens": 3}))
            with pytest.raises(InvalidRequestError) as caught:
                router.build("same", {"text": "hi"})
            assert caught.value.field == "rid"
            await stream.collect()
            again = router.submit(router.build("same", {"text": "hi", "max_new_tokens": 3}))
            assert len((await again.collect()).token_ids) == 3

    asyncio.run(body())


def test_requests_that_cannot_fit_the_kv_pool_are_rejected() -> None:
    async def body() -> None:
        async with connected_router(null_worker(num_pages=64)) as (router, _):
            with pytest.raises(InvalidRequestError, match="KV cache capacity of 64") as caught:
                router.build(None, {"input_ids": [5] * 10, "max_new_tokens": 60})
            assert caught.value.field == "max_new_tokens"
            shrunk = router.build(None, {"input_ids": [5] * 10})  # default shrinks to fit
            assert shrunk.sampling.max_new_tokens == 54
            with pytest.raises(InvalidRequestError, match="prompt of 64 tokens is too long: "
                               "the KV cache capacity is 64") as caught:
                router.build(None, {"input_ids": [5] * 64})
            assert caught.value.field == "input_ids"
            with pytest.raises(InvalidRequestError) as caught:
                router.build(None, {"text": ""})
            assert caught.value.field == "text"

    asyncio.run(body())


def test_the_trace_context_travels_with_the_request() -> None:
    trace = TraceContext("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "k=v")

    async def body() -> None:
        async with connected_router() as (router, mesh):
            stream = router.submit(router.build("t", {"text": "hi", "max_new_tokens": 1}, trace))
            await stream.collect()
            sent = mesh.batches_received[0].requests[0].trace
            assert (sent.traceparent, sent.tracestate) == (trace.traceparent, trace.tracestate)

    asyncio.run(body())


def test_losing_the_mesh_fails_live_requests_and_the_router_reconnects() -> None:
    async def body() -> None:
        port = free_port()
        async with connected_router(port=port) as (router, mesh):
            stream = router.submit(router.build("x", {"text": "hi", "max_new_tokens": 1500}))
            await anext(stream)
            await mesh.stop()
            with pytest.raises(UnavailableError):
                async for _ in stream:
                    pass
            assert not router.ready
            with pytest.raises(UnavailableError):
                router.submit(router.build("y", {"text": "hi"}))
            replacement = MiniMesh(null_worker(), Detokenizer(tiny_tokenizer()))
            await replacement.start(port)
            try:
                await asyncio.wait_for(router.wait_ready(), 10)
                done = await router.submit(router.build("y", {"text": "hi",
                                                              "max_new_tokens": 4})).collect()
                assert len(done.token_ids) == 4
            finally:
                await replacement.stop()

    asyncio.run(body())


def test_latency_metrics_are_observed_per_request_and_token() -> None:
    async def body() -> None:
        metrics = FrontDoorMetrics("tiny-llama")
        async with connected_router(metrics=metrics) as (router, _):
            streams = [router.submit(router.build(None, {"text": "hi", "max_new_tokens": 6}))
                       for _ in range(4)]
            await asyncio.gather(*(stream.collect() for stream in streams))
        model = {"model_name": "tiny-llama"}

        def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
            return metrics.registry.get_sample_value(name, model | (labels or {}))
        assert sample("radixmesh:time_to_first_token_seconds_count") == 4
        assert sample("radixmesh:e2e_request_latency_seconds_count") == 4
        assert sample("radixmesh:inter_token_latency_seconds_count") == 4 * 5
        assert sample("radixmesh:generation_tokens_total") == 24
        assert sample("radixmesh:num_requests_total", {"finish_reason": "length"}) == 4

    asyncio.run(body())
