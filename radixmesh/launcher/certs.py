"""Throwaway certificates for `radixmesh up --ssl-self-signed` (and the TLS tests).

One run makes a CA and two leaf certificates signed by it, in a directory only this user can
read (0700; keys 0600):
- `ca.pem`: the CA certificate a client trusts (`--ssl-ca-certs` of the client or
  `radixmesh health`, `verify=` of an HTTP client).
- `server.pem` / `server.key`: the services' identity. It names 127.0.0.1, ::1, localhost and
  any extra names given, and is good for both ends of a TLS link (server and client
  authentication), because each internal service is the server of one link and the client
  of another; the public ports serve it too.
- `client.pem` / `client.key`: a client-only identity for a client of the front door when
  `--ssl-cert-reqs 2` asks for one.
Keys are ECDSA P-256: fast to make (a CA is a few milliseconds), and every TLS stack in use
here (OpenSSL under aiohttp, BoringSSL under gRPC) speaks it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough for any mesh that lives for a `radixmesh up`; short enough that a copy left
# behind is soon worthless. Backdated a little against clock skew between processes.
VALIDITY = datetime.timedelta(days=30)
BACKDATE = datetime.timedelta(minutes=5)
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertificateSet:
    """Where one run of `make_certificates` wrote its files."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"


def make_certificates(directory: Path | None = None,
                      extra_names: tuple[str, ...] = ()) -> CertificateSet:
    """A fresh CA, server and client certificate. `directory` (made 0700 if it does not
    exist; default: a new private temporary one) must not hold a previous set."""
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="radixmesh-tls-"))  # 0700 by mkdtemp
    else:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    certs = CertificateSet(directory)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("radixmesh throwaway CA")
    ca = _sign(_builder(ca_name, ca_name, ca_key.public_key())
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(_key_usage(ca=True), critical=True), ca_key)
    _write_public(certs.ca_cert, ca)
    names = tuple(dict.fromkeys((*LOCAL_NAMES, *extra_names)))
    _issue(certs.server_cert, certs.server_key, "radixmesh service", ca, ca_key,
           (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH), names)
    _issue(certs.client_cert, certs.client_key, "radixmesh client", ca, ca_key,
           (ExtendedKeyUsageOID.CLIENT_AUTH,), ())
    return certs


def certificate_names(path: str | Path) -> list[str]:
    """The DNS names and IP addresses the first certificate of a PEM file is valid for."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName),
            *(str(address) for address in san.get_values_for_type(x509.IPAddress))]


def _issue(cert_path: Path, key_path: Path, common_name: str, ca: x509.Certificate,
           ca_key: ec.EllipticCurvePrivateKey, usages: tuple[x509.ObjectIdentifier, ...],
           names: tuple[str, ...]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(_name(common_name), ca.subject, key.public_key())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(ca=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(name) for name in names]),
            critical=False)
    _write_private(key_path, key)
    _write_public(cert_path, _sign(builder, ca_key))


def _builder(subject: x509.Name, issuer: x509.Name,
             public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False))


def _sign(builder: x509.CertificateBuilder,
          key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return builder.sign(key, hashes.SHA256())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "radixmesh"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                         decipher_only=False)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Created 0600 at once (O_EXCL): never readable by others, not even for a moment.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)


def _write_public(path: Path, cert: x509.Certificate) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(descriptor, "wb") as file:
        file.write(cert.public_bytes(serialization.Encoding.PEM))
