"""Poisoned requests at the front door of a real mesh (`radixmesh up`, the tiny model): each
fails alone with 400 / INVALID_ARGUMENT naming its field, while a stream of good requests over
HTTP and gRPC runs beside them and every one of those completes (issue 17).

Before the edge checks, a lone surrogate in `stop` or `rid` raised inside the internal wire
encoding: the front door's link to the scheduler dropped and every request in flight failed.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import grpc
import pytest

from radixmesh.client import AsyncClient, RadixMeshClientError
from radixmesh.shared.protos_gen import generate_pb2

from .conftest import MeshProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PROMPT = "The quick brown fox"
GOOD = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}
DEEP = 100_000  # would be a RecursionError (500) in json.loads
# (what, path, raw JSON body, the parameter the 400 must name)
HTTP_POISONS = [
    ("lone surrogate in stop", "/v1/completions",
     '{"prompt": "hi", "max_tokens": 4, "stop": ["\\ud800"]}', "stop[0]"),
    ("lone surrogate in a lone stop", "/v1/completions",
     '{"prompt": "hi", "max_tokens": 4, "stop": "a\\udfff"}', "stop"),
    ("lone surrogate in rid", "/v1/completions",
     '{"prompt": "hi", "max_tokens": 4, "rid": "\\ud800"}', "rid"),
    ("lone surrogate in the prompt", "/v1/completions",
     '{"prompt": "hi \\ud800", "max_tokens": 4}', "prompt"),
    ("lone surrogate in a message", "/v1/chat/completions",
     '{"messages": [{"role": "user", "content": "\\udc80"}], "max_tokens": 4}',
     "messages[0].content"),
    ("lone surrogate in the model name", "/v1/completions",
     '{"model": "\\ud800", "prompt": "hi"}', "model"),
    ("lone surrogate in user", "/v1/completions", '{"user": "\\ud800", "prompt": "hi"}', "user"),
    ("lone surrogate in a key", "/v1/completions", '{"\\ud800": 1, "prompt": "hi"}', "body"),
    ("JSON 33 deep", "/v1/completions",
     '{"prompt": "hi", "metadata": ' + '{"a": ' * 32 + "1" + "}" * 32 + "}", "body"),
    ("JSON 100000 deep", "/v1/completions", '{"prompt": ' + "[" * DEEP + "]" * DEEP + "}",
     "body"),
    ("17 stop strings", "/v1/completions",
     json.dumps({"prompt": "hi", "stop": [f"s{i}" for i in range(17)]}), "stop"),
    ("a stop string of 257 characters", "/v1/completions",
     json.dumps({"prompt": "hi", "stop": ["x" * 257]}), "stop"),
    ("65 stop token ids", "/v1/completions",
     json.dumps({"prompt": "hi", "stop_token_ids": list(range(65))}), "stop_token_ids"),
    ("a stop token id outside the vocabulary", "/v1/completions",
     json.dumps({"prompt": "hi", "stop_token_ids": [10**6]}), "stop_token_ids"),
    ("a token id outside the vocabulary", "/v1/completions",
     json.dumps({"prompt": [1, 2, 10**6]}), "prompt"),
    ("a negative token id", "/v1/completions", json.dumps({"prompt": [1, -1]}), "prompt"),
    ("a prompt past the context", "/v1/completions",
     json.dumps({"prompt": [5] * 3000, "max_tokens": 1}), "prompt"),
    ("max_tokens past the context", "/v1/completions",
     json.dumps({"prompt": "hi", "max_tokens": 5000}), "max_tokens"),
    ("n = 2", "/v1/completions", json.dumps({"prompt": "hi", "n": 2}), "n"),
    ("logit_bias entries", "/v1/completions",
     json.dumps({"prompt": "hi", "logit_bias": {"5": 10}}), "logit_bias"),
    ("NaN temperature", "/v1/completions", '{"prompt": "hi", "temperature": NaN}', "temperature"),
    ("a control character in rid", "/v1/completions",
     json.dumps({"prompt": "hi", "rid": "a\nb"}), "rid"),
    ("a rid of 300 characters", "/v1/completions",
     json.dumps({"prompt": "hi", "rid": "r" * 300}), "rid"),
]


class GoodLoad:
    """Good requests, over HTTP (whole and streamed) and gRPC, a few at a time until stopped."""

    def __init__(self, mesh: MeshProcess) -> None:
        self.mesh = mesh
        self.outcomes: list[tuple[str, object, object]] = []
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as http, AsyncClient(self.mesh.grpc_address) as rpc:
            await asyncio.gather(self._http(http, stream=False), self._http(http, stream=True),
                                 self._grpc(rpc), self._grpc(rpc))

    async def _http(self, http: aiohttp.ClientSession, stream: bool) -> None:
        while not self.stopping.is_set():
            async with http.post(self.mesh.http_url + "/v1/completions",
                                 json={**GOOD, "stream": stream}) as response:
                text = await response.text()
            if stream:
                ok = "[DONE]" in text and '"error"' not in text and '"length"' in text
            else:
                ok = json.loads(text)["choices"][0]["finish_reason"] == "length"
            self.outcomes.append(("http", response.status, ok or text))

    async def _grpc(self, rpc: AsyncClient) -> None:
        while not self.stopping.is_set():
            try:
                done = await rpc.complete(text=PROMPT, max_new_tokens=8, temperature=0)
                self.outcomes.append(("grpc", "OK", done.finish["type"] == "length" or done))
            except RadixMeshClientError as error:
                self.outcomes.append(("grpc", error.code, error.message))

    def failures(self) -> list[tuple[str, object, object]]:
        return [o for o in self.outcomes if o[1] not in (200, "OK") or o[2] is not True]


async def post_raw(http: aiohttp.ClientSession, url: str, body: str) -> tuple[int, dict]:
    async with http.post(url, data=body.encode(),
                         headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.json()


async def raw_http(port: int, head: bytes, body: bytes) -> bytes:
    """One request written byte for byte (headers no client library would send)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    return answer


async def grpc_raw_generate(address: str, payload: bytes) -> grpc.StatusCode:
    """A Generate whose request bytes no protobuf library would write."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_stream("/radixmesh.v1.Generation/Generate",
                                    request_serializer=lambda raw: raw,
                                    response_deserializer=generate_pb2.GenerateResponse.FromString)
        try:
            async for _ in call(payload, timeout=30):
                pass
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def send_http_poisons(mesh: MeshProcess) -> list[str]:
    problems = []
    async with aiohttp.ClientSession() as http:
        for what, path, body, param in HTTP_POISONS:
            status, answer = await post_raw(http, mesh.http_url + path, body)
            if status != 400 or answer["error"]["param"] != param:
                problems.append(f"{what}: {status} {answer}")
    return problems


async def send_header_poisons(mesh: MeshProcess) -> list[str]:
    """A traceparent or tracestate that is not UTF-8 is dropped, as the W3C rule says for
    any malformed one: the request is served as a new root."""
    port = int(mesh.http_url.rsplit(":", 1)[1])
    body = json.dumps(GOOD).encode()
    problems = []
    for header in (b"traceparent: 00-\xff\xfe" + b"a" * 30 + b"-00f067aa0ba902b7-01",
                   b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\x85",
                   b"tracestate: \xed\xa0\x80=1"):
        answer = await raw_http(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Type: application/json\r\n" + header + b"\r\n", body)
        if not answer.startswith(b"HTTP/1.1 200"):
            problems.append(f"{header!r}: {answer[:200]!r}")
    return problems


async def send_grpc_poisons(mesh: MeshProcess) -> list[str]:
    problems = []
    cases = [("control character in rid", {"text": "hi", "rid": "a\nb"}),
             ("17 stop strings", {"text": "hi", "stop": [f"s{i}" for i in range(17)]}),
             ("65 stop token ids", {"text": "hi", "stop_token_ids": list(range(65))}),
             ("prompt past the context", {"input_ids": [5] * 3000}),
             ("negative token id", {"input_ids": [3, -7]})]
    async with AsyncClient(mesh.grpc_address) as rpc:
        for what, fields in cases:
            try:
                await rpc.complete(max_new_tokens=4, **fields)
                problems.append(f"{what}: accepted")
            except RadixMeshClientError as error:
                if error.code != "INVALID_ARGUMENT":
                    problems.append(f"{what}: {error}")
    # Invalid UTF-8 in `rid` (field 1) then `text` (field 2): protobuf refuses to parse it.
    code = await grpc_raw_generate(mesh.grpc_address, b"\x0a\x03\xed\xa0\x80\x12\x02hi")
    if code is grpc.StatusCode.OK:
        problems.append("invalid UTF-8 over gRPC: accepted")
    return problems


async def poison_beside_good_load(mesh: MeshProcess) -> tuple[GoodLoad, list[str]]:
    load = GoodLoad(mesh)
    runner = asyncio.create_task(load.run())
    await asyncio.sleep(0.5)  # the good stream is going
    problems = []
    for send in (send_http_poisons, send_header_poisons, send_grpc_poisons):
        problems += await send(mesh)
    load.stopping.set()
    await runner
    return load, problems


def test_poisoned_requests_fail_alone_while_good_ones_complete(edge_mesh: MeshProcess):
    load, problems = asyncio.run(poison_beside_good_load(edge_mesh))
    assert problems == []
    assert len(load.outcomes) >= 8 and load.failures() == []
    assert {kind for kind, _, _ in load.outcomes} == {"http", "grpc"}

    async def health() -> int:
        async with aiohttp.ClientSession() as http, \
                http.get(edge_mesh.http_url + "/health") as response:
            return response.status

    assert asyncio.run(health()) == 200
    assert edge_mesh.process.poll() is None
