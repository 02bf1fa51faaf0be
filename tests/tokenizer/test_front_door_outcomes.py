"""What the front door answers when a request does not end well: an aborted non-streaming
request is no 200, and past --max-queued-requests a new request is shed at once.

A real front door (HTTP and gRPC) over the in-process MiniMesh, whose worker is held at a
gate: requests stay live for as long as a test needs, with no timing involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from radixmesh.client import AsyncClient, RadixMeshClientError
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.shared.step import StepPlan, StepResult
from tests.mesh.front_door_harness import FrontDoor, null_worker, running_front_door

pytestmark = pytest.mark.timeout(120)
MODEL = "tiny-llama"


class GatedWorker(NullWorker):
    """A NullWorker whose steps wait until the test opens its gate."""

    def __init__(self) -> None:
        super().__init__(null_worker().info())
        self.gate = threading.Event()

    def execute(self, plan: StepPlan) -> StepResult:
        self.gate.wait(timeout=60)
        return super().execute(plan)


@contextlib.asynccontextmanager
async def gated_front_door(**config: object) -> AsyncIterator[tuple[FrontDoor, GatedWorker]]:
    worker = GatedWorker()
    try:
        async with running_front_door(worker, **config) as door:
            yield door, worker
    finally:
        worker.gate.set()  # lets a step blocked on the gate return, so the mesh can stop


async def until_live(door: FrontDoor, count: int) -> None:
    """Until exactly `count` requests are live at the front door."""
    async with asyncio.timeout(10):
        while door.server.router.num_live != count:
            await asyncio.sleep(0.01)


def openai_client(door: FrontDoor) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=door.http_url + "/v1", api_key="none", max_retries=0)


def test_an_aborted_non_streaming_request_answers_499_with_a_body() -> None:
    async def body() -> None:
        async with gated_front_door() as (door, worker), aiohttp.ClientSession() as http:
            client = openai_client(door)
            pending = asyncio.create_task(client.completions.create(
                model=MODEL, prompt="hello", max_tokens=50, extra_body={"rid": "victim"}))
            await until_live(door, 1)
            async with http.post(door.http_url + "/abort_request",
                                 json={"rid": "victim"}) as answer:
                assert answer.status == 200 and (await answer.json())["found"] is True
            with pytest.raises(openai.APIStatusError) as aborted:
                await pending
            assert aborted.value.status_code == 499
            assert aborted.value.type == "request_aborted"
            assert "aborted" in aborted.value.message
            # SGLang's /generate likewise, aborted by the gRPC Abort of its owner.
            generate = asyncio.create_task(http.post(door.http_url + "/generate", json={
                "text": "hello", "rid": "native", "sampling_params": {"max_new_tokens": 50}}))
            await until_live(door, 1)
            async with AsyncClient(door.grpc_address) as grpc_client:
                assert await grpc_client.abort("native")
            answer = await generate
            assert answer.status == 499
            assert (await answer.json())["error"]["code"] == 499
            answer.release()
            worker.gate.set()  # the mesh serves on
            done = await client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
            assert done.choices[0].finish_reason == "length"

    asyncio.run(body())


def test_past_max_queued_requests_a_request_is_shed_with_429_and_resource_exhausted() -> None:
    async def body() -> None:
        async with gated_front_door(max_queued_requests=2) as (door, worker), \
                AsyncClient(door.grpc_address) as grpc_client, \
                aiohttp.ClientSession() as http:
            client = openai_client(door)
            held = [asyncio.create_task(client.completions.create(
                model=MODEL, prompt=f"held {i}", max_tokens=3)) for i in range(2)]
            await until_live(door, 2)
            with pytest.raises(openai.RateLimitError) as shed:
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "one more"}])
            assert "--max-queued-requests 2" in shed.value.message
            assert shed.value.response.headers["Retry-After"] == "1"
            async with http.post(door.http_url + "/generate", json={"text": "more"}) as answer:
                assert answer.status == 429
                assert (await answer.json())["error"]["type"] == "rate_limit_error"
            with pytest.raises(RadixMeshClientError) as exhausted:
                await grpc_client.complete(text="and more", max_new_tokens=3)
            assert exhausted.value.code == "RESOURCE_EXHAUSTED"
            worker.gate.set()
            assert [c.choices[0].finish_reason for c in await asyncio.gather(*held)] == \
                ["length", "length"]
            await until_live(door, 0)
            served = await grpc_client.complete(text="now there is room", max_new_tokens=3)
            assert len(served.token_ids) == 3

    asyncio.run(body())
