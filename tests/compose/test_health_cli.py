"""`radixmesh health`: the containers' healthcheck, against a real gRPC server.

The server is the services' own scaffolding (`shared/grpc_service.start_server`: health and
reflection, NOT_SERVING until told otherwise), run on an event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from radixmesh.health_cli import check_health
from radixmesh.shared.grpc_service import ServiceServer, start_server

SERVICE = "radixmesh.test.Probe"


class BackgroundServer:
    """A `start_server` server on its own loop thread; `serving(bool)` flips its health."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: ServiceServer = self._call(
            start_server("127.0.0.1:0", lambda server: None, (SERVICE,)))
        self.target = f"127.0.0.1:{self.server.port}"

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def serving(self, serving: bool) -> None:
        self._call(self.server.set_serving(serving))

    def close(self) -> None:
        self._call(self.server.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def server() -> Iterator[BackgroundServer]:
    started = BackgroundServer()
    yield started
    started.close()


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_health(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "radixmesh.cli", "health", *args],
                          capture_output=True, text=True, timeout=60)


def test_serving_server_and_service(server: BackgroundServer) -> None:
    server.serving(True)
    assert check_health(server.target).serving
    result = check_health(server.target, SERVICE)
    assert result.serving and "SERVING" in result.reason


def test_not_serving_is_reported(server: BackgroundServer) -> None:
    result = check_health(server.target, SERVICE)  # a new server starts NOT_SERVING
    assert not result.serving
    assert result.reason == f"{server.target}: service {SERVICE!r} is NOT_SERVING"


def test_unknown_service(server: BackgroundServer) -> None:
    server.serving(True)
    result = check_health(server.target, "no.such.Service")
    assert not result.serving
    assert "unknown service 'no.such.Service'" in result.reason


def test_unreachable_within_the_timeout() -> None:
    target = f"127.0.0.1:{closed_port()}"
    result = check_health(target, timeout=0.5)
    assert not result.serving
    assert result.reason.startswith(f"{target}: unreachable within 0.5s")
    assert "\n" not in result.reason


def test_cli_exit_status_and_one_line_reason(server: BackgroundServer) -> None:
    """The command Docker runs: 0 with SERVING, 1 (never Docker's reserved 2) otherwise."""
    not_yet = run_health("--target", server.target, "--service", SERVICE)
    assert not_yet.returncode == 1
    assert not_yet.stderr.strip().splitlines() == [
        f"{server.target}: service {SERVICE!r} is NOT_SERVING"]
    server.serving(True)
    ok = run_health("--target", server.target, "--timeout", "5")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{server.target}: the server is SERVING"
    gone = run_health("--target", f"127.0.0.1:{closed_port()}", "--timeout", "0.5", "--quiet")
    assert gone.returncode == 1
    assert len(gone.stderr.strip().splitlines()) == 1 and "unreachable" in gone.stderr


def test_cli_rejects_a_bad_timeout() -> None:
    assert run_health("--target", "127.0.0.1:1", "--timeout", "0").returncode == 2
