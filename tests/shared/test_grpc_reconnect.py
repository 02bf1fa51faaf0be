"""An internal channel whose peer is not up yet retries its connection about every second,
however long it has waited: gRPC's own reconnect backoff grows to two minutes, and a scheduler
waiting out a worker's long first start (kernels compiling) once noticed it a minute late."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixmesh.shared.grpc_service import open_channel

WINDOW_S = 6.0
# gRPC's default backoff (1 s, then x1.6) tries 4 times in 6 s; ours (100 ms up to 1 s), ~9.
MIN_ATTEMPTS = 7


def count_connection_attempts(listener: socket.socket, attempts: list[float]) -> None:
    """A peer that is not up: every connection is taken and closed before a byte of HTTP/2."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:  # the listener was closed: the test is over
            return
        attempts.append(time.monotonic())
        connection.close()


def test_a_missing_peer_is_retried_about_every_second() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    attempts: list[float] = []
    threading.Thread(target=count_connection_attempts, args=(listener, attempts),
                     daemon=True).start()

    async def poll_for(seconds: float) -> None:
        """As the scheduler's wait for its worker does: a short health check, again and again."""
        channel = open_channel(f"127.0.0.1:{listener.getsockname()[1]}")
        stub = health_pb2_grpc.HealthStub(channel)
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            try:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.2)
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
        await channel.close()

    try:
        asyncio.run(poll_for(WINDOW_S))
    finally:
        listener.close()
    assert len(attempts) >= MIN_ATTEMPTS, attempts
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert max(gaps) < 2.0, gaps
