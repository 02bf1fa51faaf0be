"""A mesh of real service processes whose members the tests kill, stop and replace.

`ResilientMesh` starts worker, detokenizer, scheduler and front door as separate processes
(as `radixmesh up` does, without its supervision), each log captured to a file the test can
read, and can replace one service on the same port. Clients talk to the front door's public
gRPC and HTTP ports.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixmesh.make_model import make_model
from radixmesh.shared.protos_gen import (
    common_pb2,
    generate_pb2,
    generate_pb2_grpc,
    internal_pb2_grpc,
)
from tests.mesh.conftest import free_port, mesh_model_path, stop_process  # noqa: F401

STARTUP_TIMEOUT_S = 120.0
# How long a test waits for a bounded outcome (requests failing, health flipping): far above
# the bound it checks, so a slow CI machine does not fail it, yet finite so nothing hangs.
WAIT_S = 60.0

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="session")
def other_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model: another directory, so another model id."""
    return make_model(tmp_path_factory.mktemp("other-model") / "other-llama")


def health(address: str, timeout: float = 1.0) -> int | None:
    """The gRPC health status of `address`, None when it does not answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout).status
        except grpc.RpcError:
            return None


def wait_until(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.1)


@dataclass
class Service:
    name: str
    argv: list[str]
    address: str  # its gRPC (health) address
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """kill -9, and reaped."""
        self.signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            with_cont = self.alive
            if with_cont:
                self.process.send_signal(signal.SIGCONT)  # a stopped process cannot stop
            stop_process(self.process)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_serving(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        def up() -> bool:
            if not self.alive:
                raise RuntimeError(f"the {self.name} exited:\n{self.output()[-3000:]}")
            return health(self.address, 0.5) == SERVING
        wait_until(up, f"the {self.name} SERVING", timeout)

    def wait_logged(self, text: str, timeout: float = WAIT_S) -> None:
        wait_until(lambda: text in self.output(), f"the {self.name} logging {text!r}", timeout)


@dataclass
class ResilientMesh:
    model_path: Path
    logs: Path
    scheduler_flags: tuple[str, ...] = ()
    # A context far past the tiny model's, so a null-worker request can outlast any test step.
    worker_flags: tuple[str, ...] = ("--worker", "null", "--context-length", "200000")
    hicache_flags: tuple[str, ...] | None = None  # set: a hicache service, the scheduler tiered
    services: dict[str, Service] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)

    def serve_argv(self, service: str, port: int, *flags: str) -> list[str]:
        return [sys.executable, "-P", "-m", "radixmesh.serve", "--log-level", "info", service,
                "--host", "127.0.0.1", "--port", str(port), *flags]

    def start(self) -> ResilientMesh:
        ports = {name: free_port() for name in ("worker", "detokenizer", "scheduler",
                                                 "hicache")}
        addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        model = ("--model-path", str(self.model_path))
        scheduler_flags = self.scheduler_flags
        if self.hicache_flags is not None:
            scheduler_flags += ("--enable-hierarchical-cache", "--hicache-address",
                                addresses["hicache"])
        argv = {
            "worker": self.serve_argv("worker", ports["worker"], *model, *self.worker_flags),
            "detokenizer": self.serve_argv("detokenizer", ports["detokenizer"], *model),
            "scheduler": self.serve_argv(
                "scheduler", ports["scheduler"], "--worker-address", addresses["worker"],
                "--detokenizer-address", addresses["detokenizer"], *scheduler_flags),
            "tokenizer": self.serve_argv(
                "tokenizer", self.http_port, *model, "--grpc-port", str(self.grpc_port),
                "--scheduler-address", addresses["scheduler"],
                "--detokenizer-address", addresses["detokenizer"])}
        addresses["tokenizer"] = f"127.0.0.1:{self.grpc_port}"
        if self.hicache_flags is not None:
            argv["hicache"] = self.serve_argv("hicache", ports["hicache"], *self.hicache_flags)
        for name, args in argv.items():
            self.services[name] = Service(name, args, addresses[name],
                                          self.logs / f"{name}.log").start()
        for service in self.services.values():
            service.wait_serving()
        return self

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def replace(self, name: str, *extra: str, model_path: Path | None = None,
                worker: str | None = None) -> Service:
        """Starts `name` again on its port (its old process must be gone): the same command,
        or the worker with another implementation or model."""
        old = self.services[name]
        argv = list(old.argv)
        if model_path is not None:
            argv[argv.index("--model-path") + 1] = str(model_path)
        if worker is not None:
            argv[argv.index("--worker") + 1] = worker
        new = Service(name, argv + list(extra), old.address, old.log).start()
        self.services[name] = new
        return new

    def stop(self) -> None:
        for name in ("tokenizer", "scheduler", "detokenizer", "worker", "hicache"):
            if name in self.services:
                self.services[name].stop()

    # ---- clients -----------------------------------------------------------------------------

    def http_health(self, path: str = "/health", timeout: float = 5) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                        timeout=timeout) as reply:
                return reply.status
        except urllib.error.HTTPError as error:
            return error.code

    def scheduler_load(self):
        with grpc.insecure_channel(self["scheduler"].address) as channel:
            return internal_pb2_grpc.SchedulerStub(channel).GetLoad(common_pb2.Empty(),
                                                                    timeout=5)

    def wait_idle(self) -> None:
        """Until the scheduler holds no request; then its pool must be all free or cached."""
        def idle() -> bool:
            load = self.scheduler_load()
            return load.num_running_reqs == 0 and load.num_queue_reqs == 0
        wait_until(idle, "the scheduler idle")
        assert self.scheduler_load().token_usage == 0.0


@pytest.fixture
def mesh_factory(tmp_path: Path, mesh_model_path: Path):  # noqa: F811
    started: list[ResilientMesh] = []

    def start(**kwargs) -> ResilientMesh:
        mesh = ResilientMesh(mesh_model_path, tmp_path / f"logs{len(started)}", **kwargs)
        started.append(mesh)
        return mesh.start()

    yield start
    for mesh in started:
        mesh.stop()


# ---- the public gRPC API -------------------------------------------------------------------


@dataclass
class Outcome:
    rid: str
    tokens: list[int] = field(default_factory=list)
    finish: str = ""             # finish type when it ended normally
    code: grpc.StatusCode | None = None  # the status when it ended with an error
    details: str = ""


async def generate(address: str, rid: str, prompt: list[int], max_new_tokens: int,
                   first_token: asyncio.Event | None = None) -> Outcome:
    """One Generate call to its end; never raises for an RPC error."""
    outcome = Outcome(rid)
    request = generate_pb2.GenerateRequest(
        rid=rid, input_ids=generate_pb2.TokenIds(ids=prompt),
        sampling=common_pb2.SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            async for reply in generate_pb2_grpc.GenerationStub(channel).Generate(
                    request, timeout=WAIT_S):
                outcome.tokens.extend(reply.token_ids)
                if reply.token_ids and first_token is not None:
                    first_token.set()
                if reply.HasField("finish"):
                    outcome.finish = reply.finish.type
        except grpc.aio.AioRpcError as error:
            outcome.code, outcome.details = error.code(), error.details() or ""
    return outcome


def run(coroutine):
    return asyncio.run(coroutine)
