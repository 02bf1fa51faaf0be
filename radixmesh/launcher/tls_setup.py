"""TLS as `radixmesh up` sets it up: throwaway certificates, the flags each service gets, and
how `up` itself verifies the services it checks the health of.

`--ssl-self-signed` (named after the `--ssl-*` flags it fills in, and saying what it makes)
generates a CA and certificates into a private temporary directory, turns on public TLS and
internal mutual TLS with them, tells the user where the CA certificate is, and removes the
directory when `up` exits: the keys never outlive the mesh they were made for.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import shutil
import socket
from collections.abc import Iterator

from radixmesh.launcher.certs import CertificateSet, certificate_names, make_certificates
from radixmesh.shared.tls import ClientTLS
from radixmesh.shared.tls_flags import CERT_REQUIRED, InternalTLSFlags, TLSFlags

# The flags `--ssl-self-signed` fills in: giving one of them too is a contradiction.
GENERATED_FLAGS = ("ssl_certfile", "ssl_keyfile", "internal_ssl_certfile",
                   "internal_ssl_keyfile", "internal_ssl_ca_certs")
WILDCARD_HOSTS = ("0.0.0.0", "", "::")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def self_signed_tls(args: argparse.Namespace) -> Iterator[CertificateSet]:
    """Makes throwaway certificates, points the TLS flags in `args` at them for every service,
    and removes them on the way out."""
    given = [name for name in GENERATED_FLAGS if getattr(args, name, None) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"--ssl-self-signed makes its own certificates: drop {flags}")
    certs = make_certificates(extra_names=_extra_names(args.host))
    try:
        args.ssl_certfile, args.ssl_keyfile = str(certs.server_cert), str(certs.server_key)
        args.internal_ssl_certfile = str(certs.server_cert)
        args.internal_ssl_keyfile = str(certs.server_key)
        args.internal_ssl_ca_certs = str(certs.ca_cert)
        if args.ssl_cert_reqs == CERT_REQUIRED and args.ssl_ca_certs is None:
            args.ssl_ca_certs = str(certs.ca_cert)  # clients show certs of the same CA
        yield certs
    finally:
        shutil.rmtree(certs.directory, ignore_errors=True)


def internal_tls_argv(flags: InternalTLSFlags) -> list[str]:
    """The internal TLS flags of `flags`, for a service whose other flags `up` sets itself."""
    if not flags.internal_tls_on:
        return []
    return ["--internal-ssl-certfile", flags.internal_ssl_certfile,
            "--internal-ssl-keyfile", flags.internal_ssl_keyfile,
            "--internal-ssl-ca-certs", flags.internal_ssl_ca_certs]


def self_signed_message(certs: CertificateSet) -> str:
    """What `up` tells its user, so a client can trust the mesh."""
    return (f"TLS on with throwaway certificates in {certs.directory} (removed at exit): "
            f"clients trust the CA certificate {certs.ca_cert}; a client certificate is "
            f"{certs.client_cert} with its key {certs.client_key}")


def front_door_probe_tls(front_door: TLSFlags, host: str) -> ClientTLS | None:
    """How `up` checks the front door's gRPC health at `host` when its port speaks TLS.

    It trusts what the operator gave: the certificate file's own chain (a self-signed
    certificate, or a chain that ends in its root), the client CA and the internal CA. It
    shows the internal certificate (else the public one) in case the port requires one. A
    certificate that does not name `host` is checked against the first DNS name it carries.
    """
    if not front_door.public_tls_on:
        return None
    roots = tuple(path for path in (front_door.ssl_certfile, front_door.ssl_ca_certs,
                                    front_door.internal_ssl_ca_certs) if path is not None)
    if front_door.internal_tls_on:
        identity = (front_door.internal_ssl_certfile, front_door.internal_ssl_keyfile)
    else:
        identity = (front_door.ssl_certfile, front_door.ssl_keyfile)
    names = certificate_names(front_door.ssl_certfile)
    dns_names = [name for name in names if not _is_address(name)]
    server_name = None if host in names or not dns_names else dns_names[0]
    return ClientTLS(roots, *identity, server_name=server_name)


def _extra_names(host: str) -> tuple[str, ...]:
    """Names beyond loopback the throwaway server certificate carries: the front door's
    `--host` when it is one, or this machine's name when it listens everywhere."""
    if host in WILDCARD_HOSTS:
        return (socket.gethostname(),)
    return () if host in LOOPBACK_HOSTS else (host,)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
