"""The front door's public interfaces: gRPC `Generation` (through radixmesh.client), the OpenAI
HTTP API (through aiohttp and the official `openai` client) and `radixmesh generate`.

The front door is the real TokenizerServer; behind it a MiniMesh runs the real Scheduler,
Detokenizer and a NullWorker or ModelRunner in this process (`test_front_door_e2e.py` runs
the services as processes).
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp
import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixmesh import generate_cli
from radixmesh.client import AsyncClient, Client, RadixMeshClientError
from radixmesh.engine import Engine
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.model_runner import ModelRunner
from tests.mesh.front_door_harness import (
    FrontDoor,
    null_worker,
    running_front_door,
    tiny_model_dir,
)

pytestmark = pytest.mark.timeout(120)
PROMPTS = ("The quick brown fox", "Once upon a time", "1 2 3 4")
SMALL_BODY_LIMIT = 64 * 1024


async def wait_idle(door: FrontDoor, timeout: float = 5.0) -> None:
    """Until the scheduler holds no request (GetLoad agrees), then checks for page leaks."""
    async with asyncio.timeout(timeout):
        while door.mesh.scheduler.has_work:
            await asyncio.sleep(0.01)
    load = await door.server.router.get_load()
    assert load.num_running_reqs == 0 and load.num_queue_reqs == 0
    door.mesh.scheduler.check_integrity()


def test_grpc_greedy_output_equals_the_in_process_engine() -> None:
    config = WorkerConfig(model_path=str(tiny_model_dir()), device="cpu")
    expected = Engine(config).generate(
        [{"text": prompt, "max_new_tokens": 12, "temperature": 0} for prompt in PROMPTS])

    async def body() -> None:
        async with running_front_door(ModelRunner(config, tiny_model_dir())) as door, \
                AsyncClient(door.grpc_address) as client:
            got = await asyncio.gather(*(client.complete(text=prompt, max_new_tokens=12,
                                                         temperature=0) for prompt in PROMPTS))
            for completion, reference in zip(got, expected, strict=True):
                assert completion.token_ids == reference.token_ids
                assert completion.text == reference.text
                assert completion.usage["completion_tokens"] == 12
            await wait_idle(door)

    asyncio.run(body())


def test_two_hundred_concurrent_grpc_streams_complete_with_their_token_counts() -> None:
    async def body() -> None:
        async with running_front_door() as door, AsyncClient(door.grpc_address) as client:
            lengths = [8 + i % 24 for i in range(200)]
            got = await asyncio.gather(*(client.complete(text=f"request {i}", max_new_tokens=n)
                                         for i, n in enumerate(lengths)))
            assert [len(c.token_ids) for c in got] == lengths
            assert all(c.finish == {"type": "length"} for c in got)
            assert [c.usage["completion_tokens"] for c in got] == lengths
            await wait_idle(door)

    asyncio.run(body())


def test_a_cancelled_grpc_stream_frees_its_pages() -> None:
    async def body() -> None:
        async with running_front_door() as door, AsyncClient(door.grpc_address) as client:
            stream = client.generate(text="go on", max_new_tokens=1500)
            first = await anext(stream)
            assert first.token_ids
            await stream.aclose()  # what `break` in `async for` does
            await wait_idle(door)
            assert door.server.router.num_live == 0

    asyncio.run(body())


def test_the_abort_rpc_ends_a_stream_with_an_abort_finish() -> None:
    async def body() -> None:
        async with running_front_door() as door, AsyncClient(door.grpc_address) as client:
            chunks = []
            async for chunk in client.generate(text="go on", max_new_tokens=1500, rid="mine"):
                chunks.append(chunk)
                if len(chunks) == 2:
                    assert await client.abort("mine")
            assert chunks[-1].finish["type"] == "abort"
            assert chunks[-1].usage["completion_tokens"] == sum(len(c.token_ids) for c in chunks)
            assert not await client.abort("mine")
            await wait_idle(door)

    asyncio.run(body())


GRPC_BAD_INPUTS = [
    ({"text": ""}, "text"),
    ({"input_ids": [5] * 3000}, "context length"),
    ({"text": "hi", "max_new_tokens": 0}, "max_new_tokens"),
    ({"text": "hi", "max_new_tokens": 100_000}, "max_new_tokens"),
    ({"text": "hi", "temperature": -1.0}, "temperature"),
    ({"text": "hi", "top_p": 0.0}, "top_p"),
    ({"text": "hi", "top_p": 1.5}, "top_p"),
    ({"input_ids": [10**6]}, "input_ids"),
    ({"text": "x" * (SMALL_BODY_LIMIT + 1)}, "limit"),
]


def test_grpc_bad_inputs_get_invalid_argument_and_the_mesh_keeps_serving() -> None:
    async def body() -> None:
        async with running_front_door(max_request_bytes=SMALL_BODY_LIMIT) as door, \
                AsyncClient(door.grpc_address) as client:
            live = client.generate(text="hi", max_new_tokens=1500, rid="busy")
            await anext(live)
            for kwargs, named in GRPC_BAD_INPUTS + [({"text": "hi", "rid": "busy"}, "rid")]:
                with pytest.raises(RadixMeshClientError) as caught:
                    await client.complete(**kwargs)
                assert caught.value.code == "INVALID_ARGUMENT", kwargs
                assert named in caught.value.message, (kwargs, caught.value.message)
            assert len((await client.complete(text="still fine", max_new_tokens=3)).token_ids) == 3
            await live.aclose()
            await wait_idle(door)
        sample = door.server.metrics.registry.get_sample_value
        assert sample("radixmesh:num_bad_requests_total",
                      {"model_name": "tiny-llama"}) == len(GRPC_BAD_INPUTS) + 1

    asyncio.run(body())


def test_grpc_health_reflection_and_model_info() -> None:
    async def body() -> None:
        async with running_front_door() as door, AsyncClient(door.grpc_address) as client:
            info = await client.model_info()
            assert info.model_id == "tiny-llama" and info.worker == "null"
            assert info.max_total_tokens == 8192 and info.context_len == 2048
            async with grpc.aio.insecure_channel(door.grpc_address) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="radixmesh.v1.Generation"))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                names = await _reflected_services(channel)
            assert {"radixmesh.v1.Generation", "grpc.health.v1.Health"} <= names

    asyncio.run(body())


async def _reflected_services(channel: grpc.aio.Channel) -> set[str]:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for reply in stub.ServerReflectionInfo(iter([request])):
        return {service.name for service in reply.list_services_response.service}
    return set()


# ---- OpenAI HTTP ------------------------------------------------------------------------------

HTTP_BAD_INPUTS = [
    ("completions", {"prompt": ""}, 400, "prompt"),
    ("completions", {"prompt": [5] * 3000}, 400, "prompt"),
    ("completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("completions", {"prompt": "hi", "max_tokens": 100_000}, 400, "max_tokens"),
    ("completions", {"prompt": "hi", "temperature": -0.5}, 400, "temperature"),
    ("completions", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("completions", {"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ("completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model"),  # as OpenAI answers
    ("chat/completions", {"messages": []}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                          "max_completion_tokens": -1}, 400, "max_completion_tokens"),
    ("completions", b'{"prompt": "unterminated', 400, "body"),
    ("completions", {"prompt": "x" * (SMALL_BODY_LIMIT + 1)}, 413, "body"),
]


def test_http_bad_inputs_get_openai_errors_and_the_mesh_keeps_serving() -> None:
    async def body() -> None:
        async with running_front_door(max_request_bytes=SMALL_BODY_LIMIT) as door, \
                aiohttp.ClientSession(door.http_url) as http:
            for endpoint, payload, status, param in HTTP_BAD_INPUTS:
                data = payload if isinstance(payload, bytes) else json.dumps(payload)
                async with http.post(f"/v1/{endpoint}", data=data) as response:
                    error = (await response.json())["error"]
                    assert response.status == status, (payload, error)
                    assert error["param"] == param and error["code"] == status, error
                    assert error["type"] == "invalid_request_error" and error["message"]
            async with http.post("/v1/completions",
                                 json={"prompt": "hi", "max_tokens": 4}) as response:
                assert response.status == 200
                assert (await response.json())["usage"]["completion_tokens"] == 4
            await wait_idle(door)

    asyncio.run(body())


def test_the_openai_client_streams_chat_and_completions() -> None:
    async def body() -> None:
        async with running_front_door() as door:
            await asyncio.to_thread(_use_openai_client, door.http_url + "/v1")
            await wait_idle(door)

    asyncio.run(body())


def _use_openai_client(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="x")
    assert [model.id for model in client.models.list()] == ["tiny-llama"]
    chunks = list(client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Hello"}], max_tokens=10,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "#$%&'()*+,"  # the null worker's tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10
    completion_text = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-llama", prompt="Hello", max_tokens=5, stream=True))
    assert completion_text == "#$%&'"
    whole = client.completions.create(model="tiny-llama", prompt=[1, 2, 3], max_tokens=3,
                                      extra_body={"ignore_eos": True, "top_k": 5})
    assert whole.choices[0].text == "#$%" and whole.usage.prompt_tokens == 3
    chat = client.chat.completions.create(model="tiny-llama", max_tokens=4, messages=[
        {"role": "user", "content": "Hello"}])
    assert chat.choices[0].message.content == "#$%&"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny-llama", prompt="hi", temperature=-1)


def test_an_sse_client_that_disconnects_aborts_its_request() -> None:
    async def body() -> None:
        async with running_front_door() as door:
            async with aiohttp.ClientSession(door.http_url) as http:
                response = await http.post("/v1/completions", json={
                    "prompt": "hi", "max_tokens": 1500, "stream": True})
                first = await response.content.readline()
                assert first.startswith(b"data: {")
                response.close()  # drops the connection mid-stream
            await wait_idle(door)
            assert door.server.router.num_live == 0

    asyncio.run(body())


def test_health_models_and_metrics_endpoints() -> None:
    async def body() -> None:
        async with running_front_door() as door, aiohttp.ClientSession(door.http_url) as http:
            async with http.get("/health") as response:
                assert response.status == 200
            async with http.get("/v1/no-such-endpoint") as response:
                assert response.status == 404
                assert (await response.json())["error"]["code"] == 404
            async with http.get("/v1/models") as response:
                models = await response.json()
            assert models["data"][0]["id"] == "tiny-llama"
            assert models["data"][0]["max_model_len"] == 2048
            async with http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3}):
                pass
            async with http.get("/metrics") as response:
                text = await response.text()
            model = 'model_name="tiny-llama"'
            for name in (f"radixmesh:num_running_reqs{{{model}}} 0.0",
                         f"radixmesh:num_queue_reqs{{{model}}} 0.0",
                         f"radixmesh:gen_throughput{{{model}}} 0.0",
                         f"radixmesh:time_to_first_token_seconds_count{{{model}}} 1.0",
                         f"radixmesh:inter_token_latency_seconds_count{{{model}}} 2.0",
                         f"radixmesh:e2e_request_latency_seconds_count{{{model}}} 1.0",
                         f'radixmesh:num_requests_total{{finish_reason="length",{model}}} 1.0',
                         f'radixmesh:cached_tokens_total{{{model},tier="device"}} 0.0',
                         f'radixmesh:cached_tokens_total{{{model},tier="host"}} 0.0',
                         f'radixmesh:cached_tokens_total{{{model},tier="storage"}} 0.0'):
                assert name in text, name
            # Every radixmesh metric names the model it serves.
            samples = [line for line in text.splitlines()
                       if line.startswith("radixmesh:")]
            assert samples and all(model in line for line in samples), text
            await door.mesh.stop()  # the mesh goes away: health must say so
            async with asyncio.timeout(5):
                while door.server.router.ready:
                    await asyncio.sleep(0.01)
            async with http.get("/health") as response:
                assert response.status == 503

    asyncio.run(body())


def test_an_api_key_is_required_when_configured() -> None:
    async def body() -> None:
        async with running_front_door(api_key="sesame") as door, \
                aiohttp.ClientSession(door.http_url) as http:
            async with http.get("/v1/models") as response:
                assert response.status == 401
                assert (await response.json())["error"]["type"] == "authentication_error"
            async with http.get("/v1/models",
                                headers={"Authorization": "Bearer sesame"}) as response:
                assert response.status == 200
            async with http.get("/health") as response:
                assert response.status == 200

    asyncio.run(body())


# ---- the blocking client and the CLI ----------------------------------------------------------


def test_the_blocking_client_and_the_generate_command(capsys: pytest.CaptureFixture) -> None:
    async def body() -> None:
        async with running_front_door(null_worker()) as door:
            await asyncio.to_thread(_use_blocking_client, door.grpc_address)
            parser = argparse.ArgumentParser()
            generate_cli.add_cli_args(parser)  # the command's own flags, defaults and all
            args = parser.parse_args(["Hello", "--server", door.grpc_address, "--chat",
                                      "--system", "Be brief.", "--stop", "&"])
            assert await asyncio.to_thread(generate_cli.run_cli, args) == 0
            await wait_idle(door)

    asyncio.run(body())
    out, err = capsys.readouterr()
    assert out == "#$%\n"
    assert "[finish: stop ('&'); prompt" in err


def _use_blocking_client(address: str) -> None:
    with Client(address) as client:
        assert client.model_info().worker == "null"
        chunks = list(client.generate(text="hi", max_new_tokens=3))
        assert "".join(c.text for c in chunks) == "#$%"
        assert sum(len(c.token_ids) for c in chunks) == 3
        assert chunks[-1].finish == {"type": "length"}
        stream = client.generate(text="hi", max_new_tokens=1500)
        next(stream)
        stream.close()  # cancels the request
        completion = client.complete(input_ids=[1, 2], max_new_tokens=2, ignore_eos=True)
        assert completion.text == "#$" and completion.usage["prompt_tokens"] == 2
        with pytest.raises(RadixMeshClientError, match="INVALID_ARGUMENT: temperature"):
            client.complete(text="hi", temperature=-1)
