"""The TLS flags (design §11), checked once when a config is made.

- `InternalTLSFlags`, inherited by every service's config: `--internal-ssl-certfile`,
  `--internal-ssl-keyfile`, `--internal-ssl-ca-certs`. Given together they turn on mutual TLS
  on every internal link: each internal server requires a client certificate signed by the
  CA, each internal client presents its own and verifies the server's against the same CA.
  One certificate is both: a service serves one link and is the client of another.
- `TLSFlags` adds the public ports' flags, for the front door only (the other services have
  no public port): `--ssl-certfile`, `--ssl-keyfile`, `--ssl-ca-certs`, `--ssl-cert-reqs`,
  spelled and valued as vLLM and uvicorn spell them (`--ssl-cert-reqs` is the `ssl` module's
  integer: 0 CERT_NONE, 2 CERT_REQUIRED).

Certificates are checked against the host name a peer is reached by: the internal links of
`radixmesh up` use 127.0.0.1, so an internal certificate must name it (or localhost and
::1; the throwaway ones of `--ssl-self-signed` name all three). A mesh whose services reach
each other by other names (compose service names, pod DNS) needs those names in the
certificate's subjectAltName; a client that must reach a server by an address its
certificate does not name can say which name to expect (`ClientTLS.server_name`, gRPC's
`grpc.ssl_target_name_override`) rather than verify less.

`check_tls()` runs in each config's `__post_init__`: a missing or unreadable file, or a
certificate that does not match its key, is a one-line error naming the flag and the path,
raised before anything starts.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

# The values of `--ssl-cert-reqs`: the `ssl` module's, as vLLM and uvicorn take them.
CERT_NONE = int(ssl.CERT_NONE)
CERT_OPTIONAL = int(ssl.CERT_OPTIONAL)
CERT_REQUIRED = int(ssl.CERT_REQUIRED)


class TLSConfigError(ValueError):
    """A TLS flag names a file that cannot be used; the message names flag and path."""


@dataclass(frozen=True)
class InternalTLSFlags:
    """Inherited by every service's config; all three flags or none (plain text)."""

    internal_ssl_certfile: str | None = field(default=None, metadata={
        "help": "PEM certificate (chain) this service shows on every internal link, as server "
                "and as client; with --internal-ssl-keyfile and --internal-ssl-ca-certs it "
                "turns on mutual TLS between services. It must name the host peers reach it "
                "by (127.0.0.1 under `radixmesh up`)"})
    internal_ssl_keyfile: str | None = field(default=None, metadata={
        "help": "PEM private key of --internal-ssl-certfile (unencrypted)"})
    internal_ssl_ca_certs: str | None = field(default=None, metadata={
        "help": "PEM CA certificates that internal peers' certificates must be signed by "
                "(both ways: a peer without such a client certificate is refused)"})

    @property
    def internal_tls_on(self) -> bool:
        return self.internal_ssl_certfile is not None

    def check_tls(self) -> None:
        """Raises TLSConfigError unless the internal flags are all unset or all usable."""
        flags = {"--internal-ssl-certfile": self.internal_ssl_certfile,
                 "--internal-ssl-keyfile": self.internal_ssl_keyfile,
                 "--internal-ssl-ca-certs": self.internal_ssl_ca_certs}
        missing = [flag for flag, value in flags.items() if value is None]
        if len(missing) == len(flags):
            return
        if missing:
            raise TLSConfigError(f"internal mutual TLS needs all of {', '.join(flags)}; "
                                 f"missing {', '.join(missing)}")
        check_key_pair("--internal-ssl-certfile", self.internal_ssl_certfile,
                       "--internal-ssl-keyfile", self.internal_ssl_keyfile)
        check_ca_file("--internal-ssl-ca-certs", self.internal_ssl_ca_certs)


@dataclass(frozen=True)
class TLSFlags(InternalTLSFlags):
    """The front door's: its public HTTP and gRPC ports, and its internal links."""

    ssl_certfile: str | None = field(default=None, metadata={
        "help": "PEM certificate (chain) of the public HTTP and gRPC ports: with "
                "--ssl-keyfile they serve HTTPS and gRPC over TLS"})
    ssl_keyfile: str | None = field(default=None, metadata={
        "help": "PEM private key of --ssl-certfile (unencrypted)"})
    ssl_ca_certs: str | None = field(default=None, metadata={
        "help": "PEM CA certificates that clients' certificates must be signed by "
                "(with --ssl-cert-reqs 2)"})
    ssl_cert_reqs: int = field(default=CERT_NONE, metadata={
        "help": "whether public clients must show a certificate, as the ssl module says: "
                f"{CERT_NONE} none, {CERT_REQUIRED} required (signed by --ssl-ca-certs)",
        "choices": (CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED)})

    @property
    def public_tls_on(self) -> bool:
        return self.ssl_certfile is not None

    def check_tls(self) -> None:
        super().check_tls()
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise TLSConfigError("TLS on the public ports needs both --ssl-certfile and "
                                 "--ssl-keyfile")
        if self.ssl_cert_reqs not in (CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED):
            raise TLSConfigError(f"--ssl-cert-reqs must be {CERT_NONE} (none) or "
                                 f"{CERT_REQUIRED} (required), got {self.ssl_cert_reqs}")
        if self.ssl_cert_reqs == CERT_OPTIONAL:
            # gRPC's Python server can require a client certificate or not ask for one; it
            # has no "verify if shown", so the two public ports could not agree on it.
            raise TLSConfigError(f"--ssl-cert-reqs {CERT_OPTIONAL} (optional) is not "
                                 f"supported: the gRPC port can only require a client "
                                 f"certificate ({CERT_REQUIRED}) or not ask for one "
                                 f"({CERT_NONE})")
        if self.ssl_certfile is None:
            if self.ssl_ca_certs is not None or self.ssl_cert_reqs != CERT_NONE:
                raise TLSConfigError("--ssl-ca-certs and --ssl-cert-reqs need --ssl-certfile "
                                     "and --ssl-keyfile")
            return
        if self.ssl_cert_reqs == CERT_REQUIRED and self.ssl_ca_certs is None:
            raise TLSConfigError(f"--ssl-cert-reqs {CERT_REQUIRED} needs --ssl-ca-certs: the "
                                 "CA that client certificates must be signed by")
        check_key_pair("--ssl-certfile", self.ssl_certfile, "--ssl-keyfile", self.ssl_keyfile)
        if self.ssl_ca_certs is not None:
            check_ca_file("--ssl-ca-certs", self.ssl_ca_certs)


def check_readable(flag: str, path: str) -> None:
    """TLSConfigError naming `flag` and `path` unless `path` is a file this process can read."""
    try:
        with open(path, "rb") as file:
            file.read(1)
    except IsADirectoryError:
        raise TLSConfigError(f"{flag} {path}: is a directory, not a PEM file") from None
    except OSError as error:
        raise TLSConfigError(f"{flag} {path}: cannot be read ({error.strerror})") from None


def check_key_pair(cert_flag: str, certfile: str, key_flag: str, keyfile: str) -> None:
    """Both files readable, the certificate PEM and the key its own, unencrypted."""
    check_readable(cert_flag, certfile)
    check_readable(key_flag, keyfile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_password(key_flag, keyfile))
    except ssl.SSLError as error:
        raise TLSConfigError(f"{cert_flag} {certfile} and {key_flag} {keyfile}: not a PEM "
                             f"certificate and its private key ({error.reason or error})"
                             ) from None


def check_ca_file(flag: str, path: str) -> None:
    """Readable, and holds at least one PEM certificate."""
    check_readable(flag, path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as error:
        raise TLSConfigError(f"{flag} {path}: no PEM CA certificate in it "
                             f"({error.reason or error})") from None


def _no_password(flag: str, path: str):
    # Without a callback, ssl would prompt on the terminal for an encrypted key's password.
    def refuse() -> str:
        raise TLSConfigError(f"{flag} {path}: the key is encrypted; give an unencrypted key")
    return refuse
