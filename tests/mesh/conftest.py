"""Shared fixtures for tests of the mesh: real service processes on free localhost ports.

- `mesh_model_path`: one tiny random model (with a tokenizer) for the whole session.
- `start_service(...)` / the `services` fixture: one service as its own process, returned
  once its gRPC health reports SERVING; stopped (SIGTERM, then SIGKILL) at teardown.
- `start_mesh(...)` / the `null_mesh` fixture: the whole mesh through `radixmesh up`, with
  its endpoints parsed from what it prints.
Service output goes to the test's captured stderr, shown when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from radixmesh.bench.local_meshes import stop_process as stop_gracefully
from radixmesh.launcher.free_ports import pick_free_ports
from radixmesh.make_model import make_model
from radixmesh.shared.grpc_service import is_serving

STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    (port,) = pick_free_ports(1)
    return port


def child_pids(pid: int) -> list[int]:
    """Live direct children of `pid`, read from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                children.append(int(entry.name))
    return children


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_process(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, then SIGKILL if it lingers; returns the exit status."""
    return stop_gracefully(process, timeout)


@pytest.fixture(scope="session")
def mesh_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("mesh-model") / "tiny-llama")


# ---- one service ---------------------------------------------------------------------------


@dataclass
class ServiceProcess:
    name: str
    address: str  # where its gRPC health (and its internal service) answers
    process: subprocess.Popen

    def stop(self) -> int:
        return stop_process(self.process)


def wait_serving(address: str, process: subprocess.Popen, what: str,
                 timeout: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not is_serving(address, timeout=0.5):
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} at startup")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not SERVING at {address} after {timeout:.0f}s")
        time.sleep(0.1)


def spawn_service(service: str, *flags: str, env: dict[str, str] | None = None,
                  log_level: str = "warning") -> ServiceProcess:
    """Starts `radixmesh serve SERVICE --port P FLAGS` without waiting for it."""
    port = free_port()
    argv = [sys.executable, "-P", "-m", "radixmesh.serve", "--log-level", log_level, service,
            "--host", "127.0.0.1", "--port", str(port), *flags]
    process = subprocess.Popen(argv, env={**os.environ, **(env or {})})
    return ServiceProcess(service, f"127.0.0.1:{port}", process)


class ServiceStarter:
    """Starts services and stops every one of them at teardown."""

    def __init__(self) -> None:
        self.started: list[ServiceProcess] = []

    def spawn(self, service: str, *flags: str, **kwargs) -> ServiceProcess:
        started = spawn_service(service, *flags, **kwargs)
        self.started.append(started)
        return started

    def start(self, service: str, *flags: str, **kwargs) -> ServiceProcess:
        """Spawns and waits until SERVING."""
        started = self.spawn(service, *flags, **kwargs)
        wait_serving(started.address, started.process, service)
        return started

    def stop_all(self) -> None:
        for started in reversed(self.started):
            started.stop()
        self.started = []


@pytest.fixture
def services() -> Iterator[ServiceStarter]:
    starter = ServiceStarter()
    yield starter
    starter.stop_all()


@pytest.fixture(scope="module")
def module_services() -> Iterator[ServiceStarter]:
    starter = ServiceStarter()
    yield starter
    starter.stop_all()


# ---- the whole mesh --------------------------------------------------------------------------


@dataclass
class MeshProcess:
    """A running `radixmesh up`; `internal` maps service names to their addresses."""

    process: subprocess.Popen
    http_url: str = ""
    grpc_address: str = ""
    internal: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)

    def stop(self) -> int:
        return stop_process(self.process)


_ENDPOINT = re.compile(r"^\s+(\S.*?)\s{2,}(\S+)")


def read_endpoint(mesh: MeshProcess, line: str) -> None:
    """Takes an endpoint from one line of what `up` prints once it is up, if it names one."""
    match = _ENDPOINT.match(line)
    if match:
        name, where = match.groups()
        if name == "OpenAI HTTP":
            mesh.http_url = where.removesuffix("/v1")
        elif name == "gRPC":
            mesh.grpc_address = where
        else:
            mesh.internal[name] = where


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def spawn_mesh(model_path: Path, *flags: str, worker: str = "null") -> MeshProcess:
    """Starts `radixmesh up` on free public ports; returns at once."""
    http_port, grpc_port = pick_free_ports(2)  # together, so never the same port twice
    argv = [sys.executable, "-P", "-m", "radixmesh.cli", "up", "--worker", worker,
            "--model-path", str(model_path), "--port", str(http_port),
            "--grpc-port", str(grpc_port), *flags]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    return MeshProcess(process)


def wait_mesh_up(mesh: MeshProcess, timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Reads the launcher's output until it prints its endpoints."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(mesh.process.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"radixmesh up not ready after {timeout:.0f}s") from None
        if line is None:
            raise RuntimeError(f"radixmesh up exited ({mesh.process.wait()}): {mesh.output}")
        mesh.output.append(line)
        read_endpoint(mesh, line)
        if line.startswith("Press Ctrl-C"):
            return


@contextlib.contextmanager
def start_mesh(model_path: Path, *flags: str, worker: str = "null") -> Iterator[MeshProcess]:
    mesh = spawn_mesh(model_path, *flags, worker=worker)
    try:
        wait_mesh_up(mesh)
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture(scope="module")
def null_mesh(mesh_model_path: Path) -> Iterator[MeshProcess]:
    """One null-worker mesh shared by a test module."""
    with start_mesh(mesh_model_path, worker="null") as mesh:
        yield mesh
