"""What a TLS end needs, for gRPC and for HTTP alike, made from the TLS flags.

A `ServerTLS` is a listening end (its certificate, and whether it requires clients to show
one signed by a CA); a `ClientTLS` a connecting end (the CA it trusts, the certificate it
shows, the name it expects). `shared/grpc_service.py` is the one place that turns them into
gRPC servers and channels; the front door's HTTP server takes `ServerTLS.ssl_context()`.
Files are read when credentials are made, so a service restarted by `radixmesh up` reads
them afresh. Verification is never turned off: a server reached by a name its certificate
does not carry is verified against `server_name` instead (gRPC's
`grpc.ssl_target_name_override`), which must then be a name the certificate does carry.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import grpc

from radixmesh.shared.tls_flags import CERT_REQUIRED, InternalTLSFlags, TLSConfigError, TLSFlags

NAME_OVERRIDE_OPTION = "grpc.ssl_target_name_override"


@dataclass(frozen=True)
class ServerTLS:
    """Invariant: `ca_certs` is set whenever `require_client_cert` is."""

    certfile: str
    keyfile: str
    ca_certs: str | None = None
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        if self.require_client_cert and self.ca_certs is None:
            raise TLSConfigError("requiring client certificates needs the CA that signs them")

    def grpc_credentials(self) -> grpc.ServerCredentials:
        roots = read_pem(self.ca_certs) if self.ca_certs is not None else None
        return grpc.ssl_server_credentials(
            [(read_pem(self.keyfile), read_pem(self.certfile))], root_certificates=roots,
            require_client_auth=self.require_client_cert)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.certfile, self.keyfile)
        if self.ca_certs is not None:
            context.load_verify_locations(cafile=self.ca_certs)
        context.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_NONE
        return context


@dataclass(frozen=True)
class ClientTLS:
    """`ca_certs`: PEM files whose certificates are trusted (empty: gRPC's default roots, or
    the system's for HTTP); `certfile` and `keyfile`, set together, are shown to a server that
    asks; `server_name` is the name expected in the server's certificate when the address's
    host is not one it carries."""

    ca_certs: tuple[str, ...] = ()
    certfile: str | None = None
    keyfile: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise TLSConfigError("a client certificate needs both its certificate and key file")

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        roots = b"\n".join(read_pem(path) for path in self.ca_certs) or None
        if self.certfile is None:
            return grpc.ssl_channel_credentials(root_certificates=roots)
        return grpc.ssl_channel_credentials(roots, read_pem(self.keyfile),
                                            read_pem(self.certfile))

    def grpc_options(self) -> tuple[tuple[str, str], ...]:
        return ((NAME_OVERRIDE_OPTION, self.server_name),) if self.server_name else ()

    def ssl_context(self) -> ssl.SSLContext:
        """For an HTTP client (`verify=` of httpx, `ssl=` of aiohttp). A `server_name` has no
        equivalent here: connect by a name the certificate carries."""
        if not self.ca_certs:
            context = ssl.create_default_context()
        else:  # these CAs alone, not the system's too; hostname checked and required
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            for path in self.ca_certs:
                context.load_verify_locations(cafile=path)
        if self.certfile is not None:
            context.load_cert_chain(self.certfile, self.keyfile)
        return context


def read_pem(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise TLSConfigError(f"{path}: cannot be read ({error.strerror})") from None


def internal_server_tls(flags: InternalTLSFlags) -> ServerTLS | None:
    """An internal server's TLS: requires a client certificate; None while internal TLS is
    off (plain text)."""
    if not flags.internal_tls_on:
        return None
    return ServerTLS(flags.internal_ssl_certfile, flags.internal_ssl_keyfile,
                     flags.internal_ssl_ca_certs, require_client_cert=True)


def internal_client_tls(flags: InternalTLSFlags) -> ClientTLS | None:
    """An internal client's TLS: trusts the internal CA alone and shows the service's own
    certificate; None while internal TLS is off."""
    if not flags.internal_tls_on:
        return None
    return ClientTLS((flags.internal_ssl_ca_certs,), flags.internal_ssl_certfile,
                     flags.internal_ssl_keyfile)


def public_server_tls(flags: TLSFlags) -> ServerTLS | None:
    """The front door's public ports' TLS; None while `--ssl-certfile` is unset."""
    if not flags.public_tls_on:
        return None
    return ServerTLS(flags.ssl_certfile, flags.ssl_keyfile, flags.ssl_ca_certs,
                     require_client_cert=flags.ssl_cert_reqs == CERT_REQUIRED)
