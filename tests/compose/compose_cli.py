"""Driving Docker Compose from the tests: which CLI is installed, and a project's containers.

Compose v2 (`docker compose`) is preferred; Compose v1 (`docker-compose` 1.29, all that
installs on this project's machines) reads the same files but knows no `up --wait`, so
readiness is polled from each container's healthcheck here.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
GPU_FILE = COMPOSE_DIR / "compose.yaml"
CPU_FILE = COMPOSE_DIR / "compose.cpu.yaml"
CI_FILE = COMPOSE_DIR / "compose.ci.yaml"
# Every combination a user or CI runs: each must validate and be accepted by `config`.
COMBINATIONS = ((GPU_FILE,), (CPU_FILE,), (CPU_FILE, CI_FILE))
# The multi-node variant (router, two nodes): the same three roles.
MULTI_GPU_FILE = COMPOSE_DIR / "compose.multinode.yaml"
MULTI_CPU_FILE = COMPOSE_DIR / "compose.multinode.cpu.yaml"
MULTI_CI_FILE = COMPOSE_DIR / "compose.multinode.ci.yaml"
MULTI_COMBINATIONS = ((MULTI_GPU_FILE,), (MULTI_CPU_FILE,), (MULTI_CPU_FILE, MULTI_CI_FILE))


def compose_command() -> list[str] | None:
    """`docker compose` where the v2 plugin answers, else `docker-compose`, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def docker_reachable() -> bool:
    if not shutil.which("docker"):
        return False
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@dataclass(frozen=True)
class ContainerState:
    name: str
    service: str
    status: str       # running, exited, restarting, ...
    health: str       # healthy, starting, unhealthy, or "" without a healthcheck
    exit_code: int
    restart_count: int
    started_at: str


@dataclass
class ComposeProject:
    """One `-p NAME -f FILE...` project."""

    name: str
    files: tuple[Path, ...]
    command: list[str]

    def run(self, *args: str, timeout: float = 600, check: bool = True
            ) -> subprocess.CompletedProcess:
        argv = [*self.command, "-p", self.name]
        for path in self.files:
            argv += ["-f", str(path)]
        result = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout,
                                cwd=REPO)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    @contextlib.contextmanager
    def brought_up(self, services: set[str], timeout: float) -> Iterator[ComposeProject]:
        """The project up with every one of `services` healthy for the `with` body, and down
        (volumes too) after it; also down first, since a killed run leaves its containers."""
        self.run("down", "-v", "--remove-orphans", check=False)
        try:
            # Compose v1 waits for each `depends_on` condition while it starts the services.
            self.run("up", "-d", "--no-build", timeout=timeout)
            self.wait_healthy(services, timeout=timeout)
            yield self
        finally:
            self.run("down", "-v", "--remove-orphans", "--timeout", "20", check=False)

    def containers(self) -> dict[str, ContainerState]:
        """This project's containers by service name (stopped ones included)."""
        listed = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.name}"],
            capture_output=True, text=True, check=True).stdout.split()
        if not listed:
            return {}
        inspected = json.loads(subprocess.run(["docker", "inspect", *listed], capture_output=True,
                                              text=True, check=True).stdout)
        states = {}
        for item in inspected:
            state = item["State"]
            service = item["Config"]["Labels"]["com.docker.compose.service"]
            states[service] = ContainerState(
                name=item["Name"].lstrip("/"), service=service, status=state["Status"],
                health=(state.get("Health") or {}).get("Status", ""),
                exit_code=state["ExitCode"], restart_count=item["RestartCount"],
                started_at=state["StartedAt"])
        return states

    def wait_healthy(self, services: set[str], timeout: float) -> dict[str, ContainerState]:
        """Polls until every one of `services` runs and reports healthy; raises TimeoutError
        naming the laggards (and the last lines of their logs)."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.containers()
            lagging = sorted(name for name in services
                             if name not in states or states[name].health != "healthy")
            if not lagging:
                return states
            if time.monotonic() > deadline:
                described = ", ".join(
                    f"{name} ({states[name].status}/{states[name].health or '-'})"
                    if name in states else f"{name} (no container)" for name in lagging)
                raise TimeoutError(f"not healthy after {timeout:.0f}s: {described}\n"
                                   + self.logs(*lagging))
            time.sleep(1.0)

    def logs(self, *services: str, tail: int = 40) -> str:
        result = self.run("logs", "--no-color", "--tail", str(tail), *services, check=False)
        return result.stdout + result.stderr
