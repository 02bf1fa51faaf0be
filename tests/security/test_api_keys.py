"""API keys on every public entry of a real mesh (`radixmesh up`, null worker, two keys): every
HTTP route and every gRPC method of `Generation` refuses a missing and a wrong key and takes
each configured one; health, reflection and /metrics stay open; one key cannot abort
another's request; SGLang's native routes and `/v1/models/{id}` answer as documented."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import openai
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from radixmesh.client import AsyncClient, Client, RadixMeshClientError
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.shared.front_door.openai_api import OpenAIApi
from radixmesh.shared.protos_gen import common_pb2, generate_pb2
from tests.mesh.conftest import MeshProcess
from tests.security.keyed_mesh import KEYS, MODEL, WRONG, bearer, http

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
GENERATION = generate_pb2.DESCRIPTOR.services_by_name["Generation"]
# One accepted call per gRPC method; a method added to the service must be added here.
GRPC_CALLS: dict[str, object] = {
    "Generate": generate_pb2.GenerateRequest(
        text="hi", sampling=common_pb2.SamplingParams(max_new_tokens=2)),
    "Abort": generate_pb2.AbortRequest(rid="no-such-request"),
    "GetModelInfo": common_pb2.Empty(),
    "GetServerInfo": common_pb2.Empty(),
    "FlushCache": common_pb2.Empty(),
}
# Every HTTP route: (method, path, body, status with a key). Checked against the app's table.
HTTP_CALLS: list[tuple[str, str, dict | None, int]] = [
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}, 200),
    ("POST", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, 200),
    ("GET", "/v1/models", None, 200),
    ("GET", f"/v1/models/{MODEL}", None, 200),
    ("GET", "/health_generate", None, 200),
    ("POST", "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 2}}, 200),
    ("GET", "/get_model_info", None, 200),
    ("GET", "/get_server_info", None, 200),
    ("GET", "/flush_cache", None, None),  # 200 idle, 400 busy: both past authentication
    ("POST", "/flush_cache", None, None),
    ("POST", "/abort_request", {"rid": "no-such-request"}, 200),
]
OPEN_ROUTES = [("GET", "/health"), ("GET", "/metrics")]


def call_grpc(address: str, method: str, metadata: tuple) -> grpc.StatusCode:
    """Calls one method of `Generation` with `metadata`; its status code."""
    spec = GENERATION.methods_by_name[method]
    response_class = message_factory.GetMessageClass(spec.output_type)
    path = f"/{GENERATION.full_name}/{method}"
    with grpc.insecure_channel(address) as channel:
        kind = channel.unary_stream if spec.server_streaming else channel.unary_unary
        stub = kind(path, request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=response_class.FromString)
        try:
            reply = stub(GRPC_CALLS[method], metadata=metadata, timeout=30)
            if spec.server_streaming:
                list(reply)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_the_tables_cover_every_grpc_method_and_http_route() -> None:
    assert set(GRPC_CALLS) == set(GENERATION.methods_by_name)
    app = OpenAIApi(None, None, TokenizerConfig(served_model_name=MODEL)).build_app()
    routes = {(route.method, route.resource.canonical.replace("{model}", MODEL))
              for route in app.router.routes() if route.method != "HEAD"}
    assert routes == {(method, path) for method, path, _, _ in HTTP_CALLS} | set(OPEN_ROUTES)


@pytest.mark.parametrize("method", sorted(GRPC_CALLS))
def test_every_grpc_method_needs_a_configured_key(keyed_mesh: MeshProcess, method: str) -> None:
    address = keyed_mesh.grpc_address
    assert call_grpc(address, method, ()) == grpc.StatusCode.UNAUTHENTICATED
    for wrong in ((("authorization", f"Bearer {WRONG}"),), (("x-api-key", WRONG),),
                  (("authorization", f"Basic {KEYS[0]}"),)):
        assert call_grpc(address, method, wrong) == grpc.StatusCode.UNAUTHENTICATED
    for key in KEYS:
        assert call_grpc(address, method, (("authorization", f"Bearer {key}"),)) == \
            grpc.StatusCode.OK
    assert call_grpc(address, method, (("x-api-key", KEYS[1]),)) == grpc.StatusCode.OK


def test_grpc_health_and_reflection_stay_open(keyed_mesh: MeshProcess) -> None:
    with grpc.insecure_channel(keyed_mesh.grpc_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([ask]), timeout=10))
        names = {service.name for service in answer.list_services_response.service}
        assert GENERATION.full_name in names


@pytest.mark.parametrize(("method", "path", "body", "status"), HTTP_CALLS,
                         ids=[f"{m} {p}" for m, p, _, _ in HTTP_CALLS])
def test_every_http_route_needs_a_configured_key(keyed_mesh: MeshProcess, method: str, path: str,
                                                 body: dict | None, status: int | None) -> None:
    url = keyed_mesh.http_url + path
    for headers in (bearer(None), bearer(WRONG), {"x-api-key": WRONG}):
        response = http(method, url, body, headers)
        assert response.status_code == 401, (path, headers, response.text)
        error = response.json()["error"]
        assert error["code"] == 401 and error["type"] == "authentication_error"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    for headers in (bearer(KEYS[0]), bearer(KEYS[1]), {"x-api-key": KEYS[0]}):
        response = http(method, url, body, headers)
        if status is None:
            assert response.status_code in (200, 400), response.text
        else:
            assert response.status_code == status, (path, response.text)


def test_health_and_metrics_stay_open(keyed_mesh: MeshProcess) -> None:
    for method, path in OPEN_ROUTES:
        assert http(method, keyed_mesh.http_url + path).status_code == 200


def test_the_openai_client_with_each_key_and_with_a_wrong_one(keyed_mesh: MeshProcess) -> None:
    for key in KEYS:
        client = openai.OpenAI(base_url=keyed_mesh.http_url + "/v1", api_key=key,
                               max_retries=0)
        completion = client.completions.create(model=MODEL, prompt="hi", max_tokens=3)
        assert completion.usage.completion_tokens == 3
        assert client.models.retrieve(MODEL).id == MODEL
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("unknown")
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="unknown", prompt="hi", max_tokens=3)
    client = openai.OpenAI(base_url=keyed_mesh.http_url + "/v1", api_key=WRONG, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_one_key_cannot_abort_another_keys_request(keyed_mesh: MeshProcess) -> None:
    async def run() -> None:
        async with AsyncClient(keyed_mesh.grpc_address, api_key=KEYS[0]) as owner, \
                AsyncClient(keyed_mesh.grpc_address, api_key=KEYS[1]) as other:
            stream = owner.generate(text="mine", max_new_tokens=1500, ignore_eos=True)
            first = await anext(stream)
            with pytest.raises(RadixMeshClientError) as refused:
                await other.abort(first.rid)
            assert refused.value.code == "PERMISSION_DENIED"
            response = await asyncio.to_thread(
                http, "POST", keyed_mesh.http_url + "/abort_request", {"rid": first.rid},
                bearer(KEYS[1]))
            assert response.status_code == 403
            assert response.json()["error"]["type"] == "permission_error"
            chunks = [first] + [chunk async for chunk in stream]  # it runs on to its end
            assert chunks[-1].finish == {"type": "length"}
            assert sum(len(chunk.token_ids) for chunk in chunks) == 1500
            # Its owner may abort it.
            stream = owner.generate(text="mine again", max_new_tokens=1500, ignore_eos=True)
            first = await anext(stream)
            assert await owner.abort(first.rid) is True
            assert [chunk async for chunk in stream][-1].finish["type"] == "abort"

    asyncio.run(run())


def test_the_blocking_client_sends_its_key_and_the_environments(
        keyed_mesh: MeshProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(keyed_mesh.grpc_address, api_key=KEYS[1]) as client:
        assert client.model_info().model_id == MODEL
    monkeypatch.setenv("RADIXMESH_API_KEY", KEYS[0])
    with Client(keyed_mesh.grpc_address) as client:
        assert len(client.complete(text="hi", max_new_tokens=2).token_ids) == 2
    monkeypatch.delenv("RADIXMESH_API_KEY")
    with Client(keyed_mesh.grpc_address) as client:
        with pytest.raises(RadixMeshClientError) as refused:
            client.model_info()
        assert refused.value.code == "UNAUTHENTICATED"


def test_generate_cli_takes_an_api_key(keyed_mesh: MeshProcess) -> None:
    argv = [sys.executable, "-P", "-m", "radixmesh.cli", "generate", "hi", "--server",
            keyed_mesh.grpc_address, "--max-new-tokens", "2"]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    served = subprocess.run([*argv, "--api-key", KEYS[0]], capture_output=True, text=True,
                            timeout=120)
    assert served.returncode == 0, served.stderr
    assert "completion 2 tokens" in served.stderr
