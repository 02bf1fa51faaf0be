"""The front door end to end: `radixmesh up` runs every service as its own process, and these
tests use only the public interfaces (gRPC through radixmesh.client, OpenAI HTTP)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from radixmesh.client import AsyncClient, RadixMeshClientError
from radixmesh.engine import Engine
from radixmesh.services.worker.config import WorkerConfig

from .conftest import MeshProcess, start_mesh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PROMPTS = ("The quick brown fox", "Once upon a time", "1 2 3 4")


@pytest.fixture(scope="module")
def model_mesh(mesh_model_path: Path) -> Iterator[MeshProcess]:
    with start_mesh(mesh_model_path, worker="model") as mesh:
        yield mesh


def scheduler_gauges(mesh: MeshProcess) -> dict[str, float]:
    """`radixmesh:num_running_reqs` and `num_queue_reqs` from the front door's /metrics,
    by name without their (model_name) labels."""
    with urllib.request.urlopen(mesh.http_url + "/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    wanted = ("radixmesh:num_running_reqs", "radixmesh:num_queue_reqs")
    return {name.split("{", 1)[0]: float(value) for name, value in
            (line.split(" ", 1) for line in lines if line.startswith(wanted))}


def wait_mesh_idle(mesh: MeshProcess, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(scheduler_gauges(mesh).values()):
        assert time.monotonic() < deadline, f"mesh still busy: {scheduler_gauges(mesh)}"
        time.sleep(0.05)


def test_greedy_output_through_the_mesh_equals_the_engine(model_mesh: MeshProcess,
                                                           mesh_model_path: Path) -> None:
    bodies = [{"text": prompt, "max_new_tokens": 16, "temperature": 0} for prompt in PROMPTS]
    bodies.append({"messages": [{"role": "user", "content": "Hi there"}],
                   "max_new_tokens": 16, "temperature": 0})
    engine = Engine(WorkerConfig(model_path=str(mesh_model_path), device="cpu"))
    expected = engine.generate(bodies)
    hf = AutoModelForCausalLM.from_pretrained(mesh_model_path, dtype=torch.float32).eval()

    async def run() -> list:
        async with AsyncClient(model_mesh.grpc_address) as client:
            return await asyncio.gather(*(client.complete(**body) for body in bodies))

    for body, got, reference in zip(bodies, asyncio.run(run()), expected, strict=True):
        assert got.token_ids == reference.token_ids
        assert got.text == reference.text
        assert got.finish["type"] == reference.finish.kind.value
        # And HF transformers, from the same prompt ids (both stop at the model's EOS).
        prompt = engine.builder.build("hf", body).input_ids
        hf_ids = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)
        assert got.token_ids == hf_ids[0, len(prompt):].tolist()
    wait_mesh_idle(model_mesh)


def test_two_hundred_concurrent_streams_complete(null_mesh: MeshProcess) -> None:
    lengths = [16 + i % 48 for i in range(200)]

    async def run() -> list:
        async with AsyncClient(null_mesh.grpc_address) as client:
            return await asyncio.gather(*(client.complete(text=f"request {i}", max_new_tokens=n)
                                          for i, n in enumerate(lengths)))

    got = asyncio.run(run())
    assert [len(c.token_ids) for c in got] == lengths
    assert [c.usage["completion_tokens"] for c in got] == lengths
    assert all(c.finish == {"type": "length"} for c in got)
    wait_mesh_idle(null_mesh)


def test_a_cancelled_stream_frees_its_pages(null_mesh: MeshProcess) -> None:
    async def run() -> None:
        async with AsyncClient(null_mesh.grpc_address) as client:
            stream = client.generate(text="go on", max_new_tokens=1500)
            await anext(stream)
            assert scheduler_gauges(null_mesh)["radixmesh:num_running_reqs"] == 1
            await stream.aclose()

    asyncio.run(run())
    wait_mesh_idle(null_mesh, timeout=2.0)


def test_an_sse_client_that_disconnects_is_aborted(null_mesh: MeshProcess) -> None:
    request = urllib.request.Request(
        null_mesh.http_url + "/v1/completions", method="POST",
        data=json.dumps({"prompt": "go on", "max_tokens": 1500, "stream": True}).encode())
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.readline().startswith(b"data: {")
    wait_mesh_idle(null_mesh, timeout=2.0)


GRPC_BAD_INPUTS = [
    ({"text": ""}, "text"),
    ({"input_ids": [5] * 5000}, "too long"),
    ({"text": "hi", "max_new_tokens": 0}, "max_new_tokens"),
    ({"text": "hi", "max_new_tokens": 10**6}, "max_new_tokens"),
    ({"text": "hi", "temperature": -1.0}, "temperature"),
    ({"text": "hi", "top_p": 0.0}, "top_p"),
    ({"text": "hi", "top_p": 1.5}, "top_p"),
    ({"text": "x" * (2 << 20)}, "limit"),
]
HTTP_BAD_INPUTS = [
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": [5] * 5000}, 400, "prompt"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 10**6}, 400, "max_tokens"),
    ({"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ({"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ({"prompt": "hi", "model": "no-such-model"}, 404, "model"),  # as OpenAI answers
    (b"{not json", 400, "body"),
    ({"prompt": "x" * (2 << 20)}, 413, "body"),
]


def test_bad_inputs_get_their_errors_while_the_mesh_keeps_serving(null_mesh: MeshProcess) -> None:
    async def run() -> None:
        async with AsyncClient(null_mesh.grpc_address) as client:
            live = client.generate(text="busy", max_new_tokens=1500)
            first = await anext(live)
            for kwargs, named in GRPC_BAD_INPUTS:
                with pytest.raises(RadixMeshClientError) as caught:
                    await client.complete(**kwargs)
                assert caught.value.code == "INVALID_ARGUMENT", kwargs
                assert named in caught.value.message, caught.value.message
            for payload, status, param in HTTP_BAD_INPUTS:
                error = await asyncio.to_thread(_post_error, null_mesh.http_url, payload)
                assert (error["code"], error["param"]) == (status, param), (payload, error)
            chunks = [chunk async for chunk in live]  # the live stream went on meanwhile
            assert len(first.token_ids) + sum(len(c.token_ids) for c in chunks) == 1500
            assert len((await client.complete(text="still here", max_new_tokens=5)).token_ids) == 5

    asyncio.run(run())
    wait_mesh_idle(null_mesh)


def _post_error(http_url: str, payload: dict | bytes) -> dict:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(http_url + "/v1/completions", data=data, method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())["error"]
        assert exc.code == body["code"] and body["type"] == "invalid_request_error"
        return body
    raise AssertionError(f"{payload!r:.80} was accepted")


def test_the_openai_client_streams_from_the_mesh(null_mesh: MeshProcess) -> None:
    client = openai.OpenAI(base_url=null_mesh.http_url + "/v1", api_key="x")
    model = client.models.list().data[0].id
    chat = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=8,
        stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chat) == "#$%&'()*"
    assert chat[-1].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt="Hello", max_tokens=4, stream=True))
    assert text == "#$%&"
    wait_mesh_idle(null_mesh)


def test_health_generate_makes_one_real_token(null_mesh: MeshProcess) -> None:
    with urllib.request.urlopen(null_mesh.http_url + "/health_generate", timeout=30) as reply:
        assert reply.status == 200
    wait_mesh_idle(null_mesh)
