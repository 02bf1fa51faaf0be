"""Helpers for tests of `radixmesh up`'s supervision: a mesh whose output is followed for its
whole life (restarts are reported after the endpoints), its services' pids by name, and a
bounded wait for requests to succeed again.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from radixmesh.client import Client, RadixMeshClientError
from tests.mesh.conftest import (
    STARTUP_TIMEOUT_S,
    MeshProcess,
    child_pids,
    pid_alive,
    read_endpoint,
    spawn_mesh,
    stop_process,
)
from tests.mesh.conftest import mesh_model_path as mesh_model_path  # the session's tiny model

RECOVERY_TIMEOUT_S = 60.0  # a restart waits its backoff, then a service starts in seconds
T = TypeVar("T")


class FollowedMesh(MeshProcess):
    """A `radixmesh up` whose every output line lands in `output`, read by a thread."""

    def line(self, pattern: str, timeout: float = RECOVERY_TIMEOUT_S, after: int = 0) -> str:
        """The first line from index `after` on matching `pattern` (a regex), waited for."""
        compiled = re.compile(pattern)

        def probe() -> str | None:
            ended = self.process.poll() is not None  # read before the output: none is missed
            found = next((line for line in self.output[after:] if compiled.search(line)), None)
            if found is None and ended:
                time.sleep(0.5)  # the reader thread's last lines
                found = next((line for line in self.output[after:]
                              if compiled.search(line)), None)
                if found is None:
                    raise AssertionError(f"`up` exited without printing {pattern!r}:\n"
                                         + "".join(self.output))
            return found

        return wait_for(probe, timeout, f"a line matching {pattern!r} from `up`")

    def service_pids(self) -> dict[str, int]:
        return service_pids(self.process.pid)


def _follow(mesh: FollowedMesh) -> None:
    assert mesh.process.stdout is not None
    for line in mesh.process.stdout:
        mesh.output.append(line)


def spawn_followed(model_path: Path, *flags: str) -> FollowedMesh:
    spawned = spawn_mesh(model_path, *flags, worker="null")
    mesh = FollowedMesh(spawned.process)
    threading.Thread(target=_follow, args=(mesh,), daemon=True).start()
    mesh.line(r"^Press Ctrl-C", timeout=STARTUP_TIMEOUT_S)
    for line in mesh.output:
        read_endpoint(mesh, line)
    return mesh


@contextlib.contextmanager
def followed_mesh(model_path: Path, *flags: str) -> Iterator[FollowedMesh]:
    mesh = spawn_followed(model_path, *flags)
    try:
        yield mesh
    finally:
        stop_process(mesh.process)


def service_pids(up_pid: int) -> dict[str, int]:
    """The live services of a `radixmesh up`, by name (read from each child's command line,
    `python -P -m radixmesh.serve --log-level LEVEL SERVICE ...`)."""
    pids = {}
    for pid in child_pids(up_pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            at = argv.index(b"--log-level") + 2
            pids[argv[at].decode()] = pid
    return pids


def wait_for(probe: Callable[[], T], timeout: float, what: str) -> T:
    """Polls `probe` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f}s")
        time.sleep(0.1)


def wait_gone(pids: list[int], timeout: float = 10.0) -> bool:
    with contextlib.suppress(TimeoutError):
        return bool(wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout, ""))
    return False


def grpc_request_ok(address: str) -> bool:
    try:
        with Client(address) as client:
            completion = client.complete(text="hello", max_new_tokens=4, timeout=5)
    except RadixMeshClientError:
        return False
    return completion.finish is not None


def http_request_ok(http_url: str, model: str) -> bool:
    body = json.dumps({"model": model, "prompt": "hello", "max_tokens": 4}).encode()
    request = urllib.request.Request(f"{http_url}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status == 200 and bool(json.load(reply)["choices"])
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_requests_succeed(mesh: MeshProcess, model: str,
                          timeout: float = RECOVERY_TIMEOUT_S) -> float:
    """Seconds until one gRPC and one HTTP request both succeed."""
    start = time.monotonic()
    wait_for(lambda: grpc_request_ok(mesh.grpc_address)
             and http_request_ok(mesh.http_url, model), timeout, "successful request")
    return time.monotonic() - start
