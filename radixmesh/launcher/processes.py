"""Running the mesh's services as child processes: start, wait until healthy, reap exits,
restart one in its place, stop.

Children run in their own sessions, so a Ctrl-C at the terminal reaches only the launcher,
which then stops them in order (front door first, so no new request reaches a half-stopped
mesh). A child that ignores SIGTERM is killed after a grace period.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from radixmesh.launcher.mesh_plan import ServiceCommand
from radixmesh.shared.grpc_service import is_serving

logger = logging.getLogger(__name__)
STOP_GRACE_S = 10.0
POLL_S = 0.2


class ServiceExitedError(RuntimeError):
    """A service ended on its own."""


@dataclass
class Child:
    command: ServiceCommand
    process: subprocess.Popen
    exit_seen: bool = False  # its exit was reported by `exits()`; cleared by `restart()`

    @property
    def name(self) -> str:
        return self.command.name


class ServiceGroup:
    """The running services; `stop()` is idempotent and safe at any point of startup."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, commands: Sequence[ServiceCommand]) -> None:
        for command in commands:
            self.children.append(Child(command, _spawn(command)))

    def restart(self, name: str) -> int:
        """Starts `name` again with the same command line, in the same place of the stop
        order; returns the new pid."""
        [child] = [child for child in self.children if child.name == name]
        assert child.process.poll() is not None, f"the {name} is still running"
        child.process, child.exit_seen = _spawn(child.command), False
        return child.process.pid

    def exits(self) -> list[tuple[Child, int]]:
        """Children that exited since the last call, with their exit status (reaped)."""
        found = []
        for child in self.children:
            code = child.process.poll()
            if code is not None and not child.exit_seen:
                child.exit_seen = True
                found.append((child, code))
        return found

    def wait_healthy(self, timeout: float, should_stop: Callable[[], bool]) -> bool:
        """True once every service reports SERVING; False if `should_stop()` turns true first.
        Raises ServiceExitedError if a child dies, TimeoutError after `timeout` seconds."""
        pending = list(self.children)
        deadline = time.monotonic() + timeout
        while pending:
            if should_stop():
                return False
            self.check_alive()
            pending = [child for child in pending if not is_serving(
                child.command.health_address, timeout=POLL_S, tls=child.command.probe_tls)]
            if pending and time.monotonic() > deadline:
                names = ", ".join(child.name for child in pending)
                raise TimeoutError(f"not healthy after {timeout:.0f}s: {names}")
            if pending:
                time.sleep(POLL_S)
        return True

    def check_alive(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise ServiceExitedError(f"the {child.name} exited with status {code}")

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM to each child, newest first, each given its turn to stop; then SIGKILL."""
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.terminate()
                try:
                    child.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    logger.warning("the %s ignored SIGTERM: killing it", child.name)
                    child.process.kill()
                    child.process.wait()
        self.children = []


def _spawn(command: ServiceCommand) -> subprocess.Popen:
    process = subprocess.Popen(command.argv, start_new_session=True)
    logger.info("started %s (pid %d)", command.name, process.pid)
    return process
