"""`radixmesh health --target HOST:PORT`: one standard gRPC health check, as an exit status.

Exits 0 when the service reports SERVING; otherwise prints one line saying why (unreachable,
NOT_SERVING, unknown service, no health service) on stderr and exits 1. It is the healthcheck
of every container in `compose/`: no probe binary to download, and it imports only grpc, so a
check every few seconds costs a fraction of a second of CPU.

Every failure exits 1, never 2: Docker reads a healthcheck's 1 as "unhealthy" and reserves 2.

Under mutual TLS it takes the services' own `--internal-ssl-*` flags and checks as an
internal peer would (a container's healthcheck can reuse its service's flags); a target
that speaks TLS without asking for a client certificate (the front door's public gRPC port)
needs only `--ssl-ca-certs`, the CA to trust.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixmesh.shared.cli_args import add_config_arguments, config_from_args
from radixmesh.shared.grpc_service import CLIENT_OPTIONS, SERVING, open_blocking_channel
from radixmesh.shared.tls import ClientTLS, internal_client_tls
from radixmesh.shared.tls_flags import InternalTLSFlags, check_ca_file

UNHEALTHY = 1
# The codes that mean nothing answered at the address (or not in time), as opposed to a health
# service that answered "no".
UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class HealthResult:
    serving: bool
    reason: str  # one line: what was seen


def check_health(target: str, service: str = "", timeout: float = 3.0,
                 tls: ClientTLS | None = None) -> HealthResult:
    """One `grpc.health.v1.Health/Check` of `service` ("" = the server as a whole) at
    `target`, waiting at most `timeout` seconds for the answer; over TLS with `tls`."""
    what = f"service {service!r}" if service else "the server"
    with open_blocking_channel(target, tls, CLIENT_OPTIONS) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            return HealthResult(False, _failure(target, service, timeout, error))
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return HealthResult(reply.status == SERVING, f"{target}: {what} is {status}")


def _failure(target: str, service: str, timeout: float, error: grpc.RpcError) -> str:
    code = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    details = " ".join(details.split())  # gRPC's details can span lines; the reason cannot
    if code in UNREACHABLE_CODES:
        return f"{target}: unreachable within {timeout:g}s ({code.name}: {details})"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"{target}: unknown service {service!r} (the health service does not know it)"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"{target}: no gRPC health service there"
    name = code.name if code is not None else type(error).__name__
    return f"{target}: health check failed ({name}: {details})"


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="host:port of the service's gRPC port")
    parser.add_argument("--service", default="",
                        help="full gRPC service name to ask about, e.g. "
                             "radixmesh.internal.Scheduler (default: the server as a whole)")
    parser.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for the answer (default 3)")
    parser.add_argument("--quiet", action="store_true", help="print nothing when SERVING")
    parser.add_argument("--ssl-ca-certs", default=None,
                        help="PEM CA certificates to trust: check over TLS, showing no client "
                             "certificate unless the --internal-ssl-* flags give one")
    add_config_arguments(parser, InternalTLSFlags)


def client_tls(args: argparse.Namespace) -> ClientTLS | None:
    """The TLS the flags ask for; ValueError naming the flag if one cannot be used."""
    flags = config_from_args(InternalTLSFlags, args)
    flags.check_tls()
    tls = internal_client_tls(flags)
    if args.ssl_ca_certs is None:
        return tls
    check_ca_file("--ssl-ca-certs", args.ssl_ca_certs)
    if tls is None:
        return ClientTLS((args.ssl_ca_certs,))
    return ClientTLS((*tls.ca_certs, args.ssl_ca_certs), tls.certfile, tls.keyfile)


def run_cli(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        print(f"--timeout must be > 0, got {args.timeout:g}", file=sys.stderr)
        return 2
    try:
        tls = client_tls(args)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    result = check_health(args.target, args.service, args.timeout, tls)
    if not result.serving:
        print(result.reason, file=sys.stderr)
        return UNHEALTHY
    if not args.quiet:
        print(result.reason)
    return 0
