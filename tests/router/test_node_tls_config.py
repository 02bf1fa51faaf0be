"""The router's node TLS flags: which links speak TLS (the CA flag for every node, grpcs:// for
one), and every unusable file or contradiction refused at start with the flag named; a failed
handshake's NodeFailure says what to check."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

from radixmesh import serve
from radixmesh.launcher.certs import CertificateSet
from radixmesh.services.router.config import RouterConfig
from radixmesh.services.router.node_link import NodeFailure, NodeLinks, error_of
from radixmesh.services.router.node_tls import NodeTarget
from radixmesh.shared.tls import ClientTLS
from tests.security.conftest import certs, foreign  # noqa: F401 (fixtures, by import)


def test_plain_text_by_default_and_grpcs_for_one_node() -> None:
    config = RouterConfig(node_urls=("a:1,grpcs://b:2", "grpc://c:3"))
    assert not config.node_tls_on
    assert config.node_targets == (NodeTarget("a:1", False), NodeTarget("b:2", True),
                                   NodeTarget("c:3", False))


def test_the_ca_flag_turns_tls_on_for_every_node(certs: CertificateSet) -> None:  # noqa: F811
    config = RouterConfig(node_urls=("a:1", "grpcs://b:2"), redis_url="redis://127.0.0.1:1/0",
                          node_ssl_ca_certs=str(certs.ca_cert),
                          node_ssl_certfile=str(certs.client_cert),
                          node_ssl_keyfile=str(certs.client_key))
    assert config.node_tls_on  # registered nodes too
    assert config.node_targets == (NodeTarget("a:1", True), NodeTarget("b:2", True))
    tls = config.node_client_tls()
    assert tls.ca_certs == (str(certs.ca_cert),) and tls.certfile == str(certs.client_cert)
    assert tls.grpc_credentials() is not None  # the files read as PEM


def test_registered_nodes_are_dialled_as_the_ca_flag_says(
        certs: CertificateSet) -> None:  # noqa: F811
    async def links_tls(tls_on: bool) -> tuple[bool, bool, bool]:
        links = NodeLinks(None, ClientTLS((str(certs.ca_cert),)), registered_tls=tls_on)
        opened = [links.open("127.0.0.1:1"), links.open("127.0.0.1:2", tls=True),
                  links.open("127.0.0.1:3", tls=False)]
        for link in opened:
            await link.close()
        return tuple(link.tls for link in opened)

    assert asyncio.run(links_tls(True)) == (True, True, False)
    assert asyncio.run(links_tls(False)) == (False, True, False)


def flags_refused(certs: CertificateSet, foreign: CertificateSet,  # noqa: F811
                  tmp: Path) -> list[tuple[dict, str]]:
    (tmp / "junk.pem").write_text("not a certificate\n")
    ca, cert, key = str(certs.ca_cert), str(certs.client_cert), str(certs.client_key)
    return [
        ({"node_ssl_ca_certs": str(tmp / "missing.pem")}, "--node-ssl-ca-certs .*missing.pem"),
        ({"node_ssl_ca_certs": str(tmp / "junk.pem")}, "--node-ssl-ca-certs .*no PEM CA"),
        ({"node_ssl_ca_certs": str(tmp)}, "--node-ssl-ca-certs .*directory"),
        ({"node_ssl_ca_certs": ca, "node_ssl_certfile": cert}, "--node-ssl-keyfile"),
        ({"node_ssl_ca_certs": ca, "node_ssl_certfile": cert,
          "node_ssl_keyfile": str(foreign.client_key)}, "--node-ssl-certfile .*--node-ssl-key"),
        ({"node_ssl_certfile": cert, "node_ssl_keyfile": key}, "--node-ssl-ca-certs"),
        ({"node_ssl_ca_certs": ca, "node_urls": ("grpc://a:1",)}, "grpc://a:1: grpc:// says"),
        ({"node_urls": ("a",)}, "--node-urls a: expected HOST:PORT"),
        ({"node_urls": ("https://a:1",)}, "--node-urls https://a:1: expected"),
    ]


def test_unusable_node_tls_flags_are_named(certs: CertificateSet, foreign: CertificateSet,  # noqa: F811
                                           tmp_path: Path) -> None:
    for flags, named in flags_refused(certs, foreign, tmp_path):
        with pytest.raises(ValueError, match=named):  # TLSConfigError is one
            RouterConfig(**{"node_urls": ("a:1",), **flags})


def test_a_missing_ca_file_stops_the_router_at_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "ca.pem"
    with caplog.at_level(logging.ERROR):
        status = serve.main(["router", "--node-urls", "127.0.0.1:1", "--model-path",
                             str(tmp_path), "--node-ssl-ca-certs", str(missing)])
    assert status == 2  # a config error: nothing started
    assert f"--node-ssl-ca-certs {missing}: cannot be read" in caplog.text


@pytest.mark.parametrize(("details", "tls", "hint"), [
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: Tls "
     "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
     "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED", True, "signed by the CA of "
     "--node-ssl-ca-certs"),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:9: Socket "
     "closed", True, "require a client certificate"),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:9: Socket "
     "closed", False, "if the node serves TLS, give --node-ssl-ca-certs"),
])
def test_a_failed_tls_connection_says_what_to_check(details: str, tls: bool, hint: str) -> None:
    error = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                 grpc.aio.Metadata(), details)
    failure = error_of(error, "127.0.0.1:9", tls)
    assert isinstance(failure, NodeFailure) and hint in str(failure)
    assert str(failure).startswith("node 127.0.0.1:9: UNAVAILABLE: failed to connect")


def test_a_node_that_is_down_gets_no_tls_hint() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: Failed "
        "to connect to remote host: Connection refused")
    assert str(error_of(error, "127.0.0.1:9", tls=True)).endswith("Connection refused")
