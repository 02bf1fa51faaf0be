"""How the router dials its nodes: plain text, or TLS verified against a CA (design §11).

A node's public gRPC port speaks TLS when its front door was given `--ssl-certfile`, and
requires a client certificate with `--ssl-cert-reqs 2`. The router's flags for the other end
of that link are the front door's words under `--node-` (as the internal links' are under
`--internal-`; SGLang's gateway names the same three files `--ca-cert-path`,
`--client-cert-path` and `--client-key-path`):
- `--node-ssl-ca-certs PATH`: trust nodes whose certificate this CA signed. Setting it turns
  TLS on for every node link: the static `--node-urls` and the nodes that register in Redis
  alike (a registration names no scheme, so one switch for the whole fleet is the rule that
  covers both; a fleet is one deployment, TLS for all or for none).
- `--node-ssl-certfile` / `--node-ssl-keyfile`: the certificate the router shows to nodes that
  require one (on every TLS link).
- Per node, a static URL may say `grpcs://HOST:PORT`: TLS for that node even without
  `--node-ssl-ca-certs` (then verified against gRPC's default roots, for a node behind a
  publicly signed certificate). `grpc://HOST:PORT` says plain text, which contradicts
  `--node-ssl-ca-certs` and is refused at start rather than silently sent in the clear. A
  bare `HOST:PORT` follows the flags.
Verification is never turned off; a node's certificate must name the host the router reaches
it by (its address in `--node-urls` or in its registration).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.shared.tls import ClientTLS
from radixmesh.shared.tls_flags import TLSConfigError, check_ca_file, check_key_pair

PLAIN_SCHEME = "grpc://"
TLS_SCHEME = "grpcs://"


@dataclass(frozen=True)
class NodeTarget:
    """One node to dial: `address` is HOST:PORT (a static node's id too)."""

    address: str
    tls: bool


@dataclass(frozen=True)
class NodeTLSFlags:
    """Inherited by the router's config. Invariant after `check_node_tls`: the files named are
    readable, the CA file holds a certificate, the client certificate matches its key."""

    node_ssl_ca_certs: str | None = field(default=None, metadata={
        "help": "PEM CA certificates that nodes' certificates must be signed by; setting it "
                "turns on TLS on every link to a node (--node-urls and registered nodes)"})
    node_ssl_certfile: str | None = field(default=None, metadata={
        "help": "PEM certificate (chain) the router shows to nodes that require a client "
                "certificate (their --ssl-cert-reqs 2); with --node-ssl-keyfile"})
    node_ssl_keyfile: str | None = field(default=None, metadata={
        "help": "PEM private key of --node-ssl-certfile (unencrypted)"})

    @property
    def node_tls_on(self) -> bool:
        """TLS on every node link (a `grpcs://` URL turns it on for its node alone)."""
        return self.node_ssl_ca_certs is not None

    def check_node_tls(self, urls: tuple[str, ...]) -> None:
        """TLSConfigError naming the flag unless the node TLS flags are usable with `urls`."""
        if (self.node_ssl_certfile is None) != (self.node_ssl_keyfile is None):
            raise TLSConfigError("a client certificate for nodes needs both "
                                 "--node-ssl-certfile and --node-ssl-keyfile")
        targets = [node_target(url, self.node_tls_on) for url in urls]
        if self.node_ssl_certfile is not None and not (
                self.node_tls_on or any(target.tls for target in targets)):
            raise TLSConfigError("--node-ssl-certfile is shown on TLS links only: give "
                                 "--node-ssl-ca-certs (or grpcs:// node URLs)")
        if self.node_ssl_ca_certs is not None:
            check_ca_file("--node-ssl-ca-certs", self.node_ssl_ca_certs)
        if self.node_ssl_certfile is not None:
            check_key_pair("--node-ssl-certfile", self.node_ssl_certfile,
                           "--node-ssl-keyfile", self.node_ssl_keyfile)

    def node_client_tls(self) -> ClientTLS:
        """The credentials of every TLS link to a node (files read when a link opens)."""
        cas = (self.node_ssl_ca_certs,) if self.node_ssl_ca_certs is not None else ()
        return ClientTLS(cas, self.node_ssl_certfile, self.node_ssl_keyfile)


def node_target(url: str, tls_on: bool) -> NodeTarget:
    """`url` (HOST:PORT, grpc://HOST:PORT or grpcs://HOST:PORT) as a node to dial; `tls_on`:
    whether --node-ssl-ca-certs turned TLS on for every node."""
    if url.startswith(TLS_SCHEME):
        return NodeTarget(_host_port(url, url.removeprefix(TLS_SCHEME)), tls=True)
    if url.startswith(PLAIN_SCHEME):
        if tls_on:
            raise TLSConfigError(f"--node-urls {url}: grpc:// says plain text, but "
                                 "--node-ssl-ca-certs turns TLS on for every node (write "
                                 "HOST:PORT or grpcs://HOST:PORT)")
        return NodeTarget(_host_port(url, url.removeprefix(PLAIN_SCHEME)), tls=False)
    return NodeTarget(_host_port(url, url), tls=tls_on)


def _host_port(url: str, address: str) -> str:
    host, colon, port = address.rpartition(":")
    if "://" in address or not colon or not host or not port.isdigit() or "/" in address:
        raise ValueError(f"--node-urls {url}: expected HOST:PORT, grpc://HOST:PORT or "
                         "grpcs://HOST:PORT")
    return address
