"""TLS without a mesh: the throwaway certificates, the flags' start-up errors, what `up` plans,
and the front door's two listeners (gRPC and HTTPS) requiring a client certificate.

Servers are the real ones (`shared/grpc_service.start_server`, the front door's `start_http`)
on 127.0.0.1; certificates come from `radixmesh/launcher/certs.py` in a tmp directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import stat
from pathlib import Path

import grpc
import pytest
from aiohttp import (
    ClientConnectorCertificateError,
    ClientError,
    ClientSession,
    TCPConnector,
    web,
)
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixmesh import cli
from radixmesh.launcher import add_cli_args as add_up_args
from radixmesh.launcher.certs import CertificateSet, certificate_names, make_certificates
from radixmesh.launcher.mesh_plan import UpConfig, plan_mesh
from radixmesh.launcher.tls_setup import front_door_probe_tls, self_signed_tls
from radixmesh.services.detokenizer.config import DetokenizerConfig
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.shared.front_door.http_limits import start_http
from radixmesh.shared.grpc_service import SERVING, open_channel, start_server
from radixmesh.shared.tls import ClientTLS, ServerTLS, public_server_tls
from radixmesh.shared.tls_flags import TLSConfigError


def internal_flags(certs: CertificateSet) -> dict[str, str]:
    return {"internal_ssl_certfile": str(certs.server_cert),
            "internal_ssl_keyfile": str(certs.server_key),
            "internal_ssl_ca_certs": str(certs.ca_cert)}


def public_flags(certs: CertificateSet, cert_reqs: int = 0) -> dict[str, object]:
    return {"ssl_certfile": str(certs.server_cert), "ssl_keyfile": str(certs.server_key),
            "ssl_ca_certs": str(certs.ca_cert), "ssl_cert_reqs": cert_reqs}


# ---- the certificates ----------------------------------------------------------------------


def test_certificates_are_private_and_name_the_local_host(certs: CertificateSet):
    assert stat.S_IMODE(certs.directory.stat().st_mode) == 0o700
    for key in (certs.server_key, certs.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert set(certificate_names(certs.server_cert)) == {"localhost", "127.0.0.1", "::1"}
    client = x509.load_pem_x509_certificate(certs.client_cert.read_bytes())
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # never a server's identity


# ---- start-up errors: one line naming the flag and the path ----------------------------------


def test_missing_or_unusable_files_are_named_with_their_flag(certs: CertificateSet,
                                                             foreign: CertificateSet,
                                                             tmp_path: Path):
    unreadable = tmp_path / "secret.key"
    unreadable.write_bytes(certs.server_key.read_bytes())
    unreadable.chmod(0)
    cases = [
        ({**internal_flags(certs), "internal_ssl_ca_certs": "/no/such/ca.pem"},
         "--internal-ssl-ca-certs /no/such/ca.pem: cannot be read (No such file or directory)"),
        ({**internal_flags(certs), "internal_ssl_keyfile": str(foreign.server_key)},
         f"--internal-ssl-certfile {certs.server_cert} and --internal-ssl-keyfile "
         f"{foreign.server_key}: not a PEM certificate and its private key"),
        ({**internal_flags(certs), "internal_ssl_ca_certs": str(certs.server_key)},
         f"--internal-ssl-ca-certs {certs.server_key}: no PEM CA certificate in it"),
        ({**internal_flags(certs), "internal_ssl_ca_certs": str(tmp_path)},
         f"--internal-ssl-ca-certs {tmp_path}: is a directory"),
        ({"internal_ssl_certfile": str(certs.server_cert)},
         "missing --internal-ssl-keyfile, --internal-ssl-ca-certs"),
    ]
    if os.geteuid() != 0:  # root reads whatever the mode says
        cases.append(({**internal_flags(certs), "internal_ssl_keyfile": str(unreadable)},
                      f"--internal-ssl-keyfile {unreadable}: cannot be read (Permission denied)"))
    for flags, message in cases:
        for config in (SchedulerConfig, WorkerConfig, DetokenizerConfig, TokenizerConfig):
            with pytest.raises(TLSConfigError) as error:
                config(**flags)
            assert message in str(error.value), (config.__name__, flags)
            assert "\n" not in str(error.value)


def test_public_flag_combinations_are_checked(certs: CertificateSet):
    cases = [
        ({"ssl_certfile": str(certs.server_cert)}, "needs both --ssl-certfile and --ssl-keyfile"),
        ({**public_flags(certs), "ssl_ca_certs": None, "ssl_cert_reqs": 2},
         "--ssl-cert-reqs 2 needs --ssl-ca-certs"),
        (public_flags(certs, cert_reqs=1), "--ssl-cert-reqs 1 (optional) is not supported"),
        (public_flags(certs, cert_reqs=7), "--ssl-cert-reqs must be 0 (none) or 2"),
        ({"ssl_ca_certs": str(certs.ca_cert)}, "need --ssl-certfile and --ssl-keyfile"),
        ({**public_flags(certs), "ssl_keyfile": str(certs.client_key)},
         "not a PEM certificate and its private key"),
    ]
    for flags, message in cases:
        with pytest.raises(TLSConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            TokenizerConfig(**flags)
    assert TokenizerConfig(**public_flags(certs, cert_reqs=2)).ssl_cert_reqs == 2


def test_an_encrypted_key_is_refused_without_a_prompt(certs: CertificateSet, tmp_path: Path):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TLSConfigError, match="the key is encrypted"):
        SchedulerConfig(**{**internal_flags(certs), "internal_ssl_keyfile": str(encrypted)})


def test_up_refuses_a_missing_file_before_starting_anything(capsys: pytest.CaptureFixture):
    status = cli.main(["up", "--internal-ssl-certfile", "/no/cert.pem", "--internal-ssl-keyfile",
                       "/no/key.pem", "--internal-ssl-ca-certs", "/no/ca.pem"])
    assert status == 2
    printed = capsys.readouterr().out.strip()
    assert printed == ("radixmesh up: --internal-ssl-certfile /no/cert.pem: cannot be read "
                       "(No such file or directory)")


# ---- what `up` plans --------------------------------------------------------------------------


def up_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_up_args(parser)
    return parser.parse_args(list(argv))


def test_self_signed_fills_every_tls_flag_and_removes_its_files_at_exit():
    args = up_args("--ssl-self-signed", "--ssl-cert-reqs", "2")
    with self_signed_tls(args) as certs:
        assert stat.S_IMODE(certs.directory.stat().st_mode) == 0o700
        front_door = TokenizerConfig(**{name: getattr(args, name) for name in (
            "ssl_certfile", "ssl_keyfile", "ssl_ca_certs", "ssl_cert_reqs",
            "internal_ssl_certfile", "internal_ssl_keyfile", "internal_ssl_ca_certs")})
        assert front_door.ssl_certfile == str(certs.server_cert)
        assert front_door.ssl_ca_certs == front_door.internal_ssl_ca_certs == str(certs.ca_cert)
        assert front_door.internal_tls_on and front_door.public_tls_on
    assert not certs.directory.exists()


def test_self_signed_refuses_certificates_given_too(certs: CertificateSet):
    args = up_args("--ssl-self-signed", "--ssl-certfile", str(certs.server_cert))
    with pytest.raises(ValueError, match="drop --ssl-certfile"), self_signed_tls(args):
        pass


def test_the_plan_gives_every_service_the_internal_flags_and_the_front_door_the_public_ones(
        certs: CertificateSet, tmp_path: Path):
    front_door = TokenizerConfig(**internal_flags(certs), **public_flags(certs))
    worker = WorkerConfig(model_path=str(tmp_path))
    plan = plan_mesh(UpConfig(), worker, SchedulerConfig(enable_hierarchical_cache=True),
                     front_door, "info")
    assert plan.http_url.startswith("https://127.0.0.1:")
    internal = ["--internal-ssl-certfile", str(certs.server_cert), "--internal-ssl-keyfile",
                str(certs.server_key), "--internal-ssl-ca-certs", str(certs.ca_cert)]
    for service in plan.services:
        argv = list(service.argv)
        for flag, value in zip(internal[::2], internal[1::2], strict=True):
            assert argv.count(flag) == 1 and argv[argv.index(flag) + 1] == value, service.name
        assert ("--ssl-certfile" in argv) == (service.name == "tokenizer")
        assert service.probe_tls is not None, service.name
    assert {service.name for service in plan.services} == {
        "worker", "detokenizer", "hicache", "scheduler", "tokenizer"}
    plain = plan_mesh(UpConfig(), worker, SchedulerConfig(), TokenizerConfig(), "info")
    assert plain.http_url.startswith("http://")
    assert all(service.probe_tls is None for service in plain.services)
    assert not any(flag.startswith("--") and "ssl" in flag
                   for service in plain.services for flag in service.argv)


def test_the_front_door_probe_expects_a_name_its_certificate_carries(certs: CertificateSet,
                                                                     tmp_path: Path):
    named = make_certificates(tmp_path / "named", extra_names=("mesh.example",))
    front_door = TokenizerConfig(ssl_certfile=str(named.server_cert),
                                 ssl_keyfile=str(named.server_key))
    assert front_door_probe_tls(front_door, "127.0.0.1").server_name is None
    assert front_door_probe_tls(front_door, "10.1.2.3").server_name == "localhost"
    assert front_door_probe_tls(TokenizerConfig(), "127.0.0.1") is None


# ---- the front door's listeners requiring a client certificate ------------------------------


def health_status(address: str, tls: ClientTLS | None) -> object:
    async def ask() -> object:
        async with open_channel(address, tls) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return reply.status
    return asyncio.run(ask())


def test_a_grpc_port_requiring_client_certificates(certs: CertificateSet,
                                                   foreign: CertificateSet):
    tls = public_server_tls(TokenizerConfig(**public_flags(certs, cert_reqs=2)))
    assert tls == ServerTLS(str(certs.server_cert), str(certs.server_key), str(certs.ca_cert),
                            require_client_cert=True)

    async def serve_and_ask() -> dict[str, object]:
        server = await start_server("127.0.0.1:0", lambda _: None, (), tls=tls)
        await server.set_serving()
        address = f"127.0.0.1:{server.port}"
        ca = (str(certs.ca_cert),)
        clients = {
            "client certificate": ClientTLS(ca, str(certs.client_cert), str(certs.client_key)),
            "no client certificate": ClientTLS(ca),
            "foreign client certificate": ClientTLS(ca, str(foreign.client_cert),
                                                    str(foreign.client_key)),
            "not trusting the CA": ClientTLS((str(foreign.ca_cert),), str(certs.client_cert),
                                             str(certs.client_key)),
            "plain text": None,
        }
        try:
            return {name: await asyncio.to_thread(health_status, address, client)
                    for name, client in clients.items()}
        finally:
            await server.stop(grace=None)

    seen = asyncio.run(serve_and_ask())
    assert seen.pop("client certificate") == SERVING
    assert seen == dict.fromkeys(seen, grpc.StatusCode.UNAVAILABLE)


def test_https_requiring_client_certificates(certs: CertificateSet, foreign: CertificateSet):
    config = TokenizerConfig(port=0, **public_flags(certs, cert_reqs=2))

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def serve_and_ask() -> list[object]:
        app = web.Application()
        app.router.add_get("/", hello)
        runner, site = await start_http(app, config)
        url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"
        seen = []
        try:
            for client in (ClientTLS((str(certs.ca_cert),), str(certs.client_cert),
                                     str(certs.client_key)),
                           ClientTLS((str(certs.ca_cert),)),
                           ClientTLS((str(foreign.ca_cert),))):
                seen.append(await _get(url, client.ssl_context()))
        finally:
            await runner.cleanup()
        return seen

    served, no_certificate, not_trusted = asyncio.run(serve_and_ask())
    assert served == "hello"
    assert isinstance(no_certificate, ClientError | ssl.SSLError | OSError), no_certificate
    assert isinstance(not_trusted, ssl.SSLCertVerificationError)


async def _get(url: str, context: ssl.SSLContext) -> str | Exception:
    """The body, or what the client raised: its certificate error when it refused the
    server, else the connection error it saw."""
    try:
        async with ClientSession(connector=TCPConnector(ssl=context)) as session, \
                session.get(url) as reply:
            return await reply.text()
    except ClientConnectorCertificateError as error:
        return error.certificate_error
    except (ClientError, ssl.SSLError, OSError) as error:  # a TLS alert or a reset
        return error
