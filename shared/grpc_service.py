"""What every radixmesh gRPC service shares: an asyncio server that carries the standard health
service and server reflection, the channels to its peers, and waiting until a peer reports
SERVING.

A server starts NOT_SERVING and flips to SERVING once its service is ready to take calls, so
`radixmesh up`, the tests and peers can all wait on the same signal.

Every gRPC server and channel of the mesh is made here (`start_server`, `open_channel`,
`open_blocking_channel`), so TLS is decided in one place: given a `ServerTLS` / `ClientTLS`
(`shared/tls.py`) the port or channel is secure, else plain text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from radixmesh.shared.errors import grpc_code
from radixmesh.shared.tls import ClientTLS, ServerTLS

# The one set of options for every internal channel and server. Internal messages carry
# whole batches (a long prompt's ids, a 1000-request token batch): far above gRPC's 4 MiB
# default, and both ends are ours. Still bounded: a bug that builds a runaway message fails
# that one call with RESOURCE_EXHAUSTED instead of making a peer allocate without end.
INTERNAL_MESSAGE_BYTES = 256 << 20
# Keepalive (issue 17): a peer that is stopped (SIGSTOP), wedged or gone without closing its
# socket answers no HTTP/2 ping, so the transport closes and every stream on it fails with
# UNAVAILABLE within KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS (~10 s), idle or busy. Pings are
# answered by gRPC's own threads, so a worker busy in a long step still answers them. Both
# ends are ours: servers accept pings this often without data and never strike for them.
KEEPALIVE_TIME_MS = 5_000
KEEPALIVE_TIMEOUT_MS = 5_000
# A channel whose peer is not listening yet retries its connection with gRPC's backoff, which
# grows to two minutes: a scheduler waiting out a worker's two-minute first start (kernels
# compiling) noticed it a minute late. Peers of a mesh start and restart on one host or
# network, so a retry a second is cheap and the wait ends within a second of the peer.
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)
INTERNAL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", INTERNAL_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", INTERNAL_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # What this gRPC core actually waits for a ping's ack (its default is a minute; without
    # it a stopped peer was never detected: keepalive_timeout_ms alone did not close it).
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.http2.max_ping_strikes", 0),
    *RECONNECT_OPTIONS,
)
# The public client's channel: unlimited both ways, because the server it talks to decides
# what is too big (the front door's --max-request-bytes) and says so by name; a client-side
# limit could only refuse first with gRPC's vaguer message. Replies are a server's deltas.
CLIENT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
)
ChannelOptions = Sequence[tuple[str, int | str]]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ServiceServer:
    """A started server; `service_names` are the full names health reports on."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    port: int

    async def set_serving(self, serving: bool = True) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float = 1.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)

    async def serve_until_stopped(self) -> None:
        """Reports SERVING, then serves until the server ends or the task is cancelled; stops
        the server (NOT_SERVING first) on the way out either way."""
        await self.set_serving()
        try:
            await self.server.wait_for_termination()
        finally:
            await self.stop()


async def start_server(address: str, register: Callable[[grpc.aio.Server], None],
                       service_names: Sequence[str],
                       options: ChannelOptions = INTERNAL_OPTIONS,
                       tls: ServerTLS | None = None) -> ServiceServer:
    """Binds `address` (host:port; port 0 picks a free one), registers the services, starts.
    With `tls` the port speaks only TLS (and requires a client certificate if it says so).

    Health answers NOT_SERVING for everything until `set_serving()` is called.
    """
    # gRPC sets SO_REUSEPORT by default on Linux, so a second server on a taken port would
    # bind silently and share its traffic; off, a clash fails here with the port named.
    server = grpc.aio.server(options=[*options, ("grpc.so_reuseport", 0)])
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = (server.add_insecure_port(address) if tls is None
                else server.add_secure_port(address, tls.grpc_credentials()))
    except RuntimeError as error:  # grpcio's way of saying the bind failed
        raise OSError(f"cannot listen on {address}: is the port in use?") from error
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    started = ServiceServer(server, health_servicer, tuple(service_names), port)
    await started.set_serving(False)
    await server.start()
    return started


async def abort_with(context: grpc.aio.ServicerContext, error: BaseException) -> NoReturn:
    """Ends an RPC with `error`'s status from the shared table (`shared/errors.py`)."""
    await context.abort(grpc_code(error), str(error))
    raise AssertionError("context.abort raises")  # for type checkers: abort never returns


def host_port(host: str, port: int) -> str:
    """`host:port`, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def wait_until_serving(channel: grpc.aio.Channel, timeout: float,
                             service: str = "") -> None:
    """Polls the peer's health until SERVING; raises TimeoutError after `timeout` seconds."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
            if reply.status == SERVING:
                return
        except grpc.aio.AioRpcError:
            pass  # not listening yet, or still starting
        if time.monotonic() > deadline:
            raise TimeoutError(f"peer not SERVING after {timeout:.0f}s")
        await asyncio.sleep(0.1)


def open_channel(address: str, tls: ClientTLS | None = None,
                 options: ChannelOptions = INTERNAL_OPTIONS) -> grpc.aio.Channel:
    """An asyncio channel to `address`: TLS when `tls` is given (verifying the server, showing
    a client certificate if `tls` has one), plain text otherwise."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.grpc_credentials(),
                                   options=[*options, *tls.grpc_options()])


def open_blocking_channel(address: str, tls: ClientTLS | None = None,
                          options: ChannelOptions = ()) -> grpc.Channel:
    """The blocking twin of `open_channel`, for probes and command-line tools."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.grpc_credentials(),
                               options=[*options, *tls.grpc_options()])


def is_serving(address: str, timeout: float = 1.0, tls: ClientTLS | None = None) -> bool:
    """One blocking health check of `address`; False on any failure."""
    with open_blocking_channel(address, tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == SERVING
