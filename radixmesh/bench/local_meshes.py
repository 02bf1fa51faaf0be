"""Meshes, a Redis and a router that a benchmark starts on this machine itself (`cross-node`
needs two meshes sharing one Redis; the router benchmark, several meshes behind a router):
each a child process on free loopback ports, stopped as Ctrl-C would (SIGTERM: it drains and
stops its services)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from radixmesh.launcher.free_ports import pick_free_ports

STARTUP_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 60.0
READY_LINE = "Press Ctrl-C"


@dataclass
class LocalMesh:
    grpc_address: str
    metrics_url: str          # the front door's /metrics
    hicache_metrics_url: str  # the hicache service's /metrics


def stop_process(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, then SIGKILL if it lingers past `timeout` s; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _wait_ready(process: subprocess.Popen, log: list[str]) -> None:
    """Until `up` prints that it is ready; RuntimeError (with its last lines) if it exits."""
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line)
            if line.startswith(READY_LINE):
                ready.set()
    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready.wait(0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"radixmesh up did not come up: {''.join(log[-20:])}")


@contextlib.contextmanager
def local_mesh(up_flags: Sequence[str]) -> Iterator[LocalMesh]:
    http_port, grpc_port, hicache_metrics = pick_free_ports(3)
    argv = [sys.executable, "-P", "-m", "radixmesh.cli", "up", "--port", str(http_port),
            "--grpc-port", str(grpc_port), "--hicache-metrics-port", str(hicache_metrics),
            *up_flags]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        _wait_ready(process, [])
        yield LocalMesh(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}/metrics",
                        f"http://127.0.0.1:{hicache_metrics}/metrics")
    finally:
        stop_process(process)


@contextlib.contextmanager
def local_redis() -> Iterator[str]:
    """A redis-server on a free loopback port, nothing persisted; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server), "
                           "or name one with --redis-url")
    (port,) = pick_free_ports(1)
    with tempfile.TemporaryDirectory(prefix="radixmesh-redis-") as directory:
        process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                    "--dir", directory, "--save", "", "--appendonly", "no"],
                                   stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", port), timeout=1):
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_process(process)


@dataclass
class LocalRouter:
    grpc_address: str
    http_url: str  # its /metrics sums the nodes' tier counters


@contextlib.contextmanager
def local_router(flags: Sequence[str], num_nodes: int) -> Iterator[LocalRouter]:
    """`radixmesh serve router` with `flags`, once `num_nodes` nodes are usable behind it."""
    from radixmesh.bench.node_spread import usable_nodes  # gRPC only where a router runs

    http_port, grpc_port = pick_free_ports(2)
    argv = [sys.executable, "-P", "-m", "radixmesh.serve", "router", "--host", "127.0.0.1",
            "--port", str(http_port), "--grpc-port", str(grpc_port), *flags]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    router = LocalRouter(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}")
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while usable_nodes(router.grpc_address) < num_nodes:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the router did not see {num_nodes} usable nodes")
            time.sleep(0.5)
        yield router
    finally:
        stop_process(process)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # a mesh started here
        return response.read().decode()
