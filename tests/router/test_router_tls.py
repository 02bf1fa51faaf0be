"""The router dials a node whose front door speaks TLS and requires a client certificate of
its CA (`--ssl-cert-reqs 2`): one null-worker node for the module, certificates made as the
security tests make them. A router trusting the CA and showing a certificate of it serves the
official `openai` client through the node; a router trusting another CA, or showing no
certificate, finds the node unusable: it says why once in its log, answers 503 naming the
reason, `/health` 503, and keeps running."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from radixmesh.launcher.certs import CertificateSet
from tests.mesh.conftest import MeshProcess, mesh_model_path, start_mesh  # noqa: F401
from tests.router.conftest import Router, start_router
from tests.security.conftest import certs, foreign  # noqa: F401 (fixtures, by import)

PROBES = 3  # failed probes seen before judging what the router says of an unusable node
WAIT_S = 30.0


@pytest.fixture(scope="module")
def tls_node(mesh_model_path: Path, certs: CertificateSet  # noqa: F811
             ) -> Iterator[MeshProcess]:
    with start_mesh(mesh_model_path, "--ssl-certfile", str(certs.server_cert),
                    "--ssl-keyfile", str(certs.server_key), "--ssl-ca-certs",
                    str(certs.ca_cert), "--ssl-cert-reqs", "2", worker="null") as mesh:
        yield mesh


def client_cert(certs: CertificateSet) -> tuple[str, ...]:  # noqa: F811
    return ("--node-ssl-certfile", str(certs.client_cert),
            "--node-ssl-keyfile", str(certs.client_key))


def openai_client(router: Router) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.http_url}/v1", api_key="none", max_retries=0)


def health(router: Router) -> int:
    try:
        with urllib.request.urlopen(f"{router.http_url}/health", timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def node_failures(router: Router, address: str) -> float:
    """What the router's /metrics counts of the node's failures (its failed probes)."""
    with urllib.request.urlopen(f"{router.http_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "radixmesh:router_node_failures_total"
               and sample.labels.get("node") == address)


def assert_refused_with(router: Router, address: str, log: Path, reason: str) -> None:
    """The node is unusable for `reason`: said once in the log, though probes repeat, and to
    a client with 503; the router runs on."""
    deadline = time.monotonic() + WAIT_S
    while node_failures(router, address) < PROBES:
        assert time.monotonic() < deadline, "the router does not probe the node"
        time.sleep(0.1)
    assert health(router) == 503
    client = openai_client(router)
    model = client.models.list().data[0].id
    with pytest.raises(openai.InternalServerError) as refused:
        client.completions.create(model=model, prompt="hello", max_tokens=4)
    assert refused.value.status_code == 503
    assert address in refused.value.message and reason in refused.value.message
    said = [line for line in log.read_text().splitlines() if f"node {address}" in line]
    assert len(said) == 1 and "unusable" in said[0] and reason in said[0], said
    assert router.process.poll() is None


def test_a_router_trusting_the_nodes_ca_serves_the_openai_client(
        tls_node: MeshProcess, certs: CertificateSet, mesh_model_path: Path  # noqa: F811
) -> None:
    address = tls_node.grpc_address
    with start_router(mesh_model_path, "--node-urls", address,
                      "--node-ssl-ca-certs", str(certs.ca_cert), *client_cert(certs)) as router:
        router.wait_nodes({address})
        client = openai_client(router)
        model = client.models.list().data[0].id
        completion = client.completions.create(model=model, prompt="hello", max_tokens=5)
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        node = router.nodes()[address]
        assert health(router) == 200
    assert completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert node["tls"] and node["requests"] == 2 and node["last_error"] == ""


def test_a_node_whose_certificate_fails_verification_is_unusable(
        tls_node: MeshProcess, certs: CertificateSet, foreign: CertificateSet,  # noqa: F811
        mesh_model_path: Path, tmp_path: Path) -> None:  # noqa: F811
    address, log = tls_node.grpc_address, tmp_path / "router.log"
    with start_router(mesh_model_path, "--node-urls", address, "--node-ssl-ca-certs",
                      str(foreign.ca_cert), *client_cert(certs), log=log,
                      serving=False) as router:
        assert_refused_with(router, address, log, "CERTIFICATE_VERIFY_FAILED")


def test_a_node_requiring_a_client_certificate_refuses_a_router_without_one(
        tls_node: MeshProcess, certs: CertificateSet, mesh_model_path: Path,  # noqa: F811
        tmp_path: Path) -> None:
    address, log = tls_node.grpc_address, tmp_path / "router.log"
    # grpcs:// turns TLS on for this node; the CA flag says which CA to trust.
    with start_router(mesh_model_path, "--node-urls", f"grpcs://{address}",
                      "--node-ssl-ca-certs", str(certs.ca_cert), log=log,
                      serving=False) as router:
        assert_refused_with(router, address, log, "require a client certificate")
