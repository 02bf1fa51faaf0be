"""The front door's explicit limits, on real servers and sockets: a cap on HTTP connections, a
header and a body timeout, a cap on gRPC Generate streams.

The front door is assembled here from its real parts (router, OpenAI app, Generation servicer)
with `http_limits.start_http` and `grpc_limit_options`, connected to the internal services of a
real mesh: what the tokenizer's server does once it serves through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest

from radixmesh.client import AsyncClient
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.tokenizer.mesh_link import GrpcMeshLink
from radixmesh.services.tokenizer.router import Router
from radixmesh.shared.front_door.http_limits import grpc_limit_options, start_http
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.front_door.openai_api import OpenAIApi
from radixmesh.shared.front_door.servicer import GenerationServicer
from radixmesh.shared.grpc_service import start_server
from radixmesh.shared.protos_gen import generate_pb2, generate_pb2_grpc
from radixmesh.shared.tokenizer import load_tokenizer

from .conftest import MeshProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
GENERATION = generate_pb2.DESCRIPTOR.services_by_name["Generation"].full_name
WAIT_S = 60.0  # a bound on waiting, never a figure under test


@dataclass
class FrontDoor:
    http_port: int
    grpc_address: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@contextlib.asynccontextmanager
async def front_door(mesh: MeshProcess, model_path: Path, **flags: object,
                     ) -> AsyncIterator[FrontDoor]:
    config = TokenizerConfig(model_path=str(model_path), scheduler_address=mesh.internal[
        "scheduler"], detokenizer_address=mesh.internal["detokenizer"], **flags)
    metrics = FrontDoorMetrics(config.served_model_name)
    link = GrpcMeshLink(config.scheduler_address, config.detokenizer_address)
    router = Router(link, load_tokenizer(config.model_path), metrics)
    task = asyncio.create_task(router.run())
    await asyncio.wait_for(router.wait_ready(), WAIT_S)
    runner, site = await start_http(OpenAIApi(router, metrics, config).build_app(), config,
                                    port=0)
    servicer = GenerationServicer(router, metrics, config.served_model_name,
                                  config.max_request_bytes, limits=config.sampling_limits,
                                  max_streams=config.max_concurrent_streams)
    grpc_server = await start_server(
        "127.0.0.1:0", lambda server: generate_pb2_grpc.add_GenerationServicer_to_server(
            servicer, server), [GENERATION], options=grpc_limit_options(config))
    try:
        yield FrontDoor(site.port, f"127.0.0.1:{grpc_server.port}")
    finally:
        await runner.cleanup()
        await grpc_server.stop(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await link.close()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), WAIT_S)


async def connection_cap(door: FrontDoor) -> None:
    held = [await asyncio.open_connection("127.0.0.1", door.http_port) for _ in range(2)]
    reader, writer = await asyncio.open_connection("127.0.0.1", door.http_port)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await closed_by_server(reader)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"too many connections" in answer
    writer.close()
    held[0][1].close()  # one of the two frees its place
    await held[0][1].wait_closed()
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # until the server has seen the close
            async with http.get(door.url + "/v1/models") as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.05)
        assert response.status == 200
    held[1][1].close()


async def stalled_headers_and_body(door: FrontDoor) -> None:
    # Headers that never end: the connection is closed, with nothing answered.
    reader, writer = await asyncio.open_connection("127.0.0.1", door.http_port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert await closed_by_server(reader) == b""
    writer.close()
    # A body that never ends: 408, and the connection is closed.
    reader, writer = await asyncio.open_connection("127.0.0.1", door.http_port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: 100\r\n\r\n{\"prompt\": ")
    answer = await closed_by_server(reader)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["param"] == "body"
    writer.close()
    # A client that keeps to the limits is served as before.
    async with aiohttp.ClientSession() as http, http.post(
            door.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}) as response:
        assert response.status == 200


def test_http_connections_are_capped_and_stalled_ones_closed(edge_mesh: MeshProcess,
                                                            mesh_model_path: Path):
    async def scenario() -> None:
        async with front_door(edge_mesh, mesh_model_path, max_connections=2,
                              http_header_timeout=0.5, http_body_timeout=0.5) as door:
            await connection_cap(door)
            await stalled_headers_and_body(door)

    asyncio.run(scenario())


async def generate_on_own_connection(address: str) -> str:
    """One short Generate over a connection of its own (gRPC channels to one address share a
    connection otherwise, and a connection's own stream limit would make it wait instead)."""
    async with grpc.aio.insecure_channel(address, options=[
            ("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = generate_pb2_grpc.GenerationStub(channel)
        request = generate_pb2.GenerateRequest(text="hi")
        try:
            async for _ in stub.Generate(request, timeout=WAIT_S):
                pass
        except grpc.aio.AioRpcError as error:
            return error.code().name
    return "OK"


def test_grpc_streams_past_the_cap_are_refused_at_once(edge_mesh: MeshProcess,
                                                       mesh_model_path: Path):
    async def scenario() -> tuple[str, str]:
        async with front_door(edge_mesh, mesh_model_path, max_concurrent_streams=2) as door, \
                AsyncClient(door.grpc_address) as client:
            started = [asyncio.Event(), asyncio.Event()]

            async def long_one(event: asyncio.Event) -> None:
                async for _ in client.generate(text="hi", max_new_tokens=1500,
                                               ignore_eos=True):
                    event.set()

            running = [asyncio.create_task(long_one(event)) for event in started]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), WAIT_S)
            refused = await generate_on_own_connection(door.grpc_address)
            for task in running:  # the client leaves: their streams end, freeing places
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            for _ in range(100):
                served = await generate_on_own_connection(door.grpc_address)
                if served == "OK":
                    break
                await asyncio.sleep(0.05)
            return refused, served

    assert asyncio.run(scenario()) == ("RESOURCE_EXHAUSTED", "OK")
