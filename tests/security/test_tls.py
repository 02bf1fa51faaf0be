"""A TLS mesh (design §11): `radixmesh up` on the tiny model with certificates made here, TLS
on the public ports and mutual TLS between services.

One mesh for the module. Clients are the real ones: the official `openai` client over an
HTTP client that verifies our CA, radixmesh's gRPC client, `radixmesh health` and
`radixmesh generate`; the refusals come from the services' own TLS stacks.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx2
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixmesh import cli
from radixmesh.client import Client, RadixMeshClientError
from radixmesh.launcher.certs import CertificateSet
from radixmesh.shared.grpc_service import SERVING, open_channel
from radixmesh.shared.protos_gen import common_pb2, internal_pb2_grpc
from radixmesh.shared.tls import ClientTLS
from tests.mesh.conftest import (  # noqa: F401 (a fixture, registered by import)
    MeshProcess,
    mesh_model_path,
    start_mesh,
)

INTERNAL = ("worker", "detokenizer", "scheduler")
PROMPT = "The quick brown fox"




@pytest.fixture(scope="module")
def tls_mesh(mesh_model_path: Path, certs: CertificateSet) -> Iterator[MeshProcess]:  # noqa: F811
    with start_mesh(mesh_model_path, "--ssl-certfile", str(certs.server_cert),
                    "--ssl-keyfile", str(certs.server_key),
                    *internal_argv(certs), worker="model") as mesh:
        yield mesh


def internal_argv(certs: CertificateSet) -> list[str]:
    return ["--internal-ssl-certfile", str(certs.server_cert),
            "--internal-ssl-keyfile", str(certs.server_key),
            "--internal-ssl-ca-certs", str(certs.ca_cert)]


def openai_client(mesh: MeshProcess, verify: ssl.SSLContext | bool) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="none", max_retries=0,
                         http_client=httpx2.Client(verify=verify))


# ---- the public ports -------------------------------------------------------------------------


def test_up_serves_https(tls_mesh: MeshProcess):
    assert tls_mesh.http_url.startswith("https://127.0.0.1:")


def test_an_http_client_trusting_the_ca_is_served(tls_mesh: MeshProcess,
                                                  certs: CertificateSet):
    client = openai_client(tls_mesh, ClientTLS((str(certs.ca_cert),)).ssl_context())
    [model] = client.models.list().data
    completion = client.completions.create(model=model.id, prompt=PROMPT, max_tokens=4,
                                           temperature=0)
    assert completion.usage.completion_tokens == 4
    chat = client.chat.completions.create(model=model.id, max_tokens=3, temperature=0,
                                          messages=[{"role": "user", "content": PROMPT}])
    assert chat.usage.completion_tokens == 3


@pytest.mark.parametrize("trust", ["system CAs", "another CA"])
def test_an_http_client_not_trusting_the_ca_is_refused(tls_mesh: MeshProcess,
                                                       foreign: CertificateSet, trust: str):
    verify = True if trust == "system CAs" else ClientTLS((str(foreign.ca_cert),)).ssl_context()
    client = openai_client(tls_mesh, verify)
    with pytest.raises(openai.APIConnectionError) as error:
        client.models.list()
    assert _caused_by(error.value, ssl.SSLCertVerificationError)


def test_plain_http_gets_no_answer_from_the_https_port(tls_mesh: MeshProcess):
    plain = tls_mesh.http_url.replace("https://", "http://")
    client = openai.OpenAI(base_url=f"{plain}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.models.list()


def test_a_grpc_client_trusting_the_ca_is_served(tls_mesh: MeshProcess, certs: CertificateSet):
    with Client(tls_mesh.grpc_address, ssl_ca_certs=str(certs.ca_cert)) as client:
        completion = client.complete(text=PROMPT, max_new_tokens=4, temperature=0)
    assert len(completion.token_ids) == 4


@pytest.mark.parametrize("trust", ["another CA", "plain text"])
def test_a_grpc_client_not_trusting_the_ca_is_refused(tls_mesh: MeshProcess,
                                                      foreign: CertificateSet, trust: str):
    tls = {"ssl_ca_certs": str(foreign.ca_cert)} if trust == "another CA" else {}
    with Client(tls_mesh.grpc_address, **tls) as client, \
            pytest.raises(RadixMeshClientError) as error:
        client.complete(text=PROMPT, max_new_tokens=4, timeout=10)
    assert error.value.code == "UNAVAILABLE"
    if trust == "another CA":
        assert "CERTIFICATE_VERIFY_FAILED" in str(error.value)


def test_generate_trusts_a_ca_file(tls_mesh: MeshProcess, certs: CertificateSet,
                                   capsys: pytest.CaptureFixture):
    status = cli.main(["generate", PROMPT, "--server", tls_mesh.grpc_address,
                       "--ssl-ca-certs", str(certs.ca_cert), "--max-new-tokens", "3"])
    assert status == 0
    assert "completion 3 tokens" in capsys.readouterr().err


# ---- the internal links -----------------------------------------------------------------------


def internal_answer(address: str, tls: ClientTLS | None) -> object:
    """What a peer connecting with `tls` gets from the service's health: its status, or the
    status code of the call that failed."""
    async def ask() -> object:
        async with open_channel(address, tls) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return reply.status
    return asyncio.run(ask())


def test_internal_services_refuse_a_peer_without_a_client_certificate(
        tls_mesh: MeshProcess, certs: CertificateSet, foreign: CertificateSet):
    ca = (str(certs.ca_cert),)
    peers = {
        "no client certificate": ClientTLS(ca),
        "a client certificate of another CA": ClientTLS(ca, str(foreign.client_cert),
                                                        str(foreign.client_key)),
        "plain text": None,
    }
    member = ClientTLS(ca, str(certs.client_cert), str(certs.client_key))
    for service in INTERNAL:
        address = tls_mesh.internal[service]
        assert internal_answer(address, member) == SERVING, service
        for name, tls in peers.items():
            assert internal_answer(address, tls) == grpc.StatusCode.UNAVAILABLE, (service, name)


def test_the_detokenizer_hands_no_text_to_a_peer_without_a_client_certificate(
        tls_mesh: MeshProcess, certs: CertificateSet):
    async def subscribe() -> grpc.StatusCode:
        async with open_channel(tls_mesh.internal["detokenizer"],
                                ClientTLS((str(certs.ca_cert),))) as channel:
            call = internal_pb2_grpc.DetokenizerStub(channel).Subscribe(common_pb2.Empty(),
                                                                       timeout=5)
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    assert asyncio.run(subscribe()) == grpc.StatusCode.UNAVAILABLE


def test_health_works_under_mutual_tls(tls_mesh: MeshProcess, certs: CertificateSet,
                                       capsys: pytest.CaptureFixture):
    for service in INTERNAL:
        address = tls_mesh.internal[service]
        assert cli.main(["health", "--target", address, *internal_argv(certs)]) == 0
        assert capsys.readouterr().out.strip() == f"{address}: the server is SERVING"
        assert cli.main(["health", "--target", address]) == 1  # plain text: refused
        assert "unreachable" in capsys.readouterr().err
    front_door = tls_mesh.grpc_address
    assert cli.main(["health", "--target", front_door, "--ssl-ca-certs",
                     str(certs.ca_cert)]) == 0
    assert capsys.readouterr().out.strip() == f"{front_door}: the server is SERVING"


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False
